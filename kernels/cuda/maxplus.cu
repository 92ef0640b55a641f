// Dense max-plus (min-plus) product on the GPU: a GEMM on the (max, +) semiring, float32.
//
// Semantics (kernels.h; the CPU kernel in ../csrc/maxplus.h): y[b, o] = max(max_k x[b, k] + w[o, k],
// bias[o]), the first maximal k as argmax, the bias winning ties (never when NaN), NaN as torch.max;
// min-plus = -maxplus(-x, -w, -bias).
//
// Structure: a block computes a BM x BN tile of y; x and w tiles of BK inputs are staged in shared
// memory (double-buffered through registers, transposed so that a thread reads its rows and
// columns as float4), and each thread keeps a TM x TN register tile of maxima, read as two slices
// of 4 rows / columns half a tile apart (conflict-free shared loads). Blocks are swizzled in groups
// of row tiles so that concurrently running blocks share x and w tiles in L2.
//
// The inner loop is one FADD and one FMNMX per term. Exactness is recovered outside it:
//  * NaN: a term can be NaN only if its x row or w row holds NaN or +inf (semantics.h, spoils_max).
//    The loads flag such rows; outputs touching them rerun torch's scan literally (dense_resolve).
//  * argmax: the tile tracks, per output, the maximum of each block of 32 inputs and the first
//    block reaching the overall maximum (about 3 instructions per 32 terms; the block index lives
//    in shared memory); the first input of that block reaching the maximum is found again at the
//    end (<= 32 terms).
//  * -0.0: fmaxf(-0.0, +0.0) may return either, so a zero maximum is also found again, and the
//    output is that first maximal term's own value.
// Interior tiles load with unguarded float4 loads; boundary tiles (rows, columns or inputs past the
// matrix) with guarded scalar ones, filling -inf: a padded term is -inf + -inf = -inf, later than
// every real term, so it never wins.
//
// Backward: a scatter over the saved argmax with atomicAdd (red.global), then, for min-plus, the
// negation the reference's -maxplus(-x, ...) applies.
#include "common.cuh"

namespace tropfx {
namespace cuda {
namespace {

template <int BM_, int BN_, int BK_, int TM_, int TN_, int TPB_, int MinBlocks_>
struct Tiling {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int TPB = TPB_;              // argmax: tiles of BK inputs per tracked block
  static constexpr int MinBlocks = MinBlocks_;  // __launch_bounds__: blocks per SM to fit
  static constexpr int TX = BN / TN, TY = BM / TM, THREADS = TX * TY;
  static constexpr int PAD = 4;      // shared rows stay 16-byte aligned for float4 reads
  static constexpr int KQ = BK / 4;  // float4s per tile row
  static constexpr int LA = BM * KQ / THREADS, LB = BN * KQ / THREADS;  // float4 loads per thread
  static constexpr int RS = TM / 4, CS = TN / 4;  // slices of 4 rows / columns per thread
  static constexpr int GROUP = 8;                 // row tiles per swizzle group
  static_assert(THREADS == 256, "the kernels run 256 threads");
  static_assert(TM % 4 == 0 && TN % 4 == 0 && BK % 4 == 0, "float4 slices");
  static_assert(LA * THREADS == BM * KQ && LB * THREADS == BN * KQ, "whole float4 loads");
  // Local row (column) of a thread's i-th row (j-th column).
  __device__ static int row_of(int ty, int i) { return (i / 4) * (BM / RS) + ty * 4 + i % 4; }
  __device__ static int col_of(int tx, int j) { return (j / 4) * (BN / CS) + tx * 4 + j % 4; }
};

// Without argmax: 128 x 128 tiles, 8 x 8 per thread. With argmax the registers also hold the
// maximum of the blocks so far (the first block reaching it lives in shared memory), so 8 x 4 per
// thread, and the maxima are tracked per block of 32 inputs (2 tiles).
// One block per SM: capped at 128 registers (2 blocks), both kernels spilled in the main loop on
// sm_90 (up to 572 B of local traffic a thread) and around dense_resolve's calls; uncapped they
// take about 170 (fast) and 150 (argmax) registers, spill-free (tests/test_ptxas.py). Each thread
// has 32-64 independent max-plus chains per shared load, so 8 warps per SM keep the ALUs busy.
using FastTiling = Tiling<128, 128, 16, 8, 8, 1, 1>;
using ArgTiling = Tiling<128, 64, 16, 8, 4, 2, 1>;

static_assert(int64_t(ArgTiling::BK) * ArgTiling::TPB * 65536 == kMaxplusArgmaxInputs,
              "block indices are 16-bit");

template <class T, bool Arg>
struct Shared {
  float a[2][T::BK][T::BM + T::PAD];  // x tile, transposed: a[k][row]
  float b[2][T::BK][T::BN + T::PAD];  // w tile, transposed: b[k][output]
  int bad_row[T::BM];                 // the x row can make NaN terms
  int bad_col[T::BN];                 // the w row can make NaN terms
  // Arg: per output of each thread, the first block of KB inputs reaching the maximum so far
  // (in shared memory: registers hold the maxima; [output][thread], conflict-free).
  uint16_t blk[Arg ? T::TM * T::TN : 1][Arg ? T::THREADS : 1];
};

// Items [it] of an R x BK tile of the row-major (rows, K) matrix P at (row0, k0), +-P, -inf past
// the matrix; bad[it] |= the item holds NaN or +inf. Consecutive threads read consecutive float4s
// of a row (KQ threads per row).
template <class T, int L, bool Guard>
__device__ __forceinline__ void load_tile(const float* __restrict__ P, int64_t rows, int64_t K,
                                          int64_t row0, int64_t k0, bool neg, float4 (&v)[L],
                                          bool (&bad)[L]) {
#pragma unroll
  for (int it = 0; it < L; ++it) {
    const int l = int(threadIdx.x) + it * T::THREADS;
    const int64_t row = row0 + l / T::KQ, k = k0 + (l % T::KQ) * 4;
    float e[4];
    if (!Guard) {
      const float4 q = __ldg(reinterpret_cast<const float4*>(P + row * K + k));
      e[0] = q.x, e[1] = q.y, e[2] = q.z, e[3] = q.w;
#pragma unroll
      for (int i = 0; i < 4; ++i) e[i] = signed_(e[i], neg);
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i)
        e[i] = row < rows && k + i < K ? signed_(__ldg(P + row * K + k + i), neg) : neg_inf();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) bad[it] |= !(e[i] < pos_inf());  // NaN or +inf
    v[it] = make_float4(e[0], e[1], e[2], e[3]);
  }
}

template <class T, int L, int PITCH>
__device__ __forceinline__ void store_tile(float (&s)[T::BK][PITCH], const float4 (&v)[L]) {
#pragma unroll
  for (int it = 0; it < L; ++it) {
    const int l = int(threadIdx.x) + it * T::THREADS;
    const int r = l / T::KQ, kq = (l % T::KQ) * 4;
    s[kq + 0][r] = v[it].x;
    s[kq + 1][r] = v[it].y;
    s[kq + 2][r] = v[it].z;
    s[kq + 3][r] = v[it].w;
  }
}

struct Resolved {
  float value;
  int32_t arg;
};

// One output from its register-tile maximum m (out of line: rare, or short).
//  bad: torch's scan over all of K, literally (NaN terms possible), then the bias rule;
//  else: the bias when it reaches m; otherwise the first k in [k0, k1) whose term equals m, with
//  that term's value (an empty range keeps m, with arg k0).
__device__ __noinline__ Resolved dense_resolve(const float* __restrict__ xr,
                                               const float* __restrict__ wr,
                                               const float* __restrict__ bias, int64_t K, bool neg,
                                               bool bad, float m, int64_t k0, int64_t k1) {
  constexpr int U = 8;  // terms loaded together: one memory round trip per 8, not per term
  if (bad) {
    Resolved r{neg_inf(), 0};
    for (int64_t k = 0; k < K && !is_nan(r.value); k += U) {
      float t[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        t[u] = k + u < K ? signed_(__ldg(xr + k + u), neg) + signed_(__ldg(wr + k + u), neg) : 0.f;
#pragma unroll
      for (int u = 0; u < U; ++u)  // torch's scan: it stops at the first NaN
        if (k + u < K && !is_nan(r.value)) extreme_step<false>(t[u], int32_t(k + u), r.value, r.arg);
    }
    if (bias != nullptr) {
      const float e = signed_(__ldg(bias), neg);
      if (e >= r.value) r = Resolved{e, -1};  // a NaN maximum stays: the comparison is false
    }
    return r;
  }
  if (bias != nullptr) {
    const float e = signed_(__ldg(bias), neg);
    if (e >= m) return Resolved{e, -1};
  }
  for (int64_t k = k0; k < k1; k += U) {
    float t[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      t[u] = k + u < k1 ? signed_(__ldg(xr + k + u), neg) + signed_(__ldg(wr + k + u), neg) : m;
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (k + u < k1 && t[u] == m) return Resolved{t[u], int32_t(k + u)};
  }
  return Resolved{m, int32_t(k0)};
}

template <class T, bool Arg>
__global__ void __launch_bounds__(256, T::MinBlocks) dense_kernel(const DenseArgs a, const bool vec,
                                                                  const bool vec_out) {
  __shared__ __align__(16) Shared<T, Arg> sm;
  constexpr int TM = T::TM, TN = T::TN, KB = T::BK * T::TPB;
  const int tid = int(threadIdx.x), tx = tid % T::TX, ty = tid / T::TX;
  const bool neg = a.minplus;

  // Swizzle: GROUP row tiles sweep the column tiles together.
  const int64_t tiles_m = ceil_div<int64_t>(a.B, T::BM), tiles_n = ceil_div<int64_t>(a.M, T::BN);
  const int64_t pid = blockIdx.x, per_group = int64_t(T::GROUP) * tiles_n;
  const int64_t first_m = pid / per_group * T::GROUP;
  const int64_t group_m = tiles_m - first_m < T::GROUP ? tiles_m - first_m : T::GROUP;
  const int64_t m0 = (first_m + pid % per_group % group_m) * T::BM;
  const int64_t n0 = (pid % per_group / group_m) * T::BN;
  const bool rows_full = m0 + T::BM <= a.B, cols_full = n0 + T::BN <= a.M;
  const int tiles_k = int(ceil_div<int64_t>(a.K, T::BK));

  for (int i = tid; i < T::BM; i += T::THREADS) sm.bad_row[i] = 0;
  for (int i = tid; i < T::BN; i += T::THREADS) sm.bad_col[i] = 0;

  float4 va[T::LA], vb[T::LB];
  bool bad_a[T::LA], bad_b[T::LB];
#pragma unroll
  for (int it = 0; it < T::LA; ++it) bad_a[it] = false;
#pragma unroll
  for (int it = 0; it < T::LB; ++it) bad_b[it] = false;

  float acc[TM][TN];                          // maxima (Arg: of the current block of KB inputs)
  float top[Arg ? TM : 1][Arg ? TN : 1];      // Arg: the maximum of the blocks so far
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = neg_inf();
  if constexpr (Arg) {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        top[i][j] = neg_inf();
        sm.blk[i * TN + j][tid] = 0;
      }
  }

  auto load = [&](int t) {
    const int64_t k0 = int64_t(t) * T::BK;
    const bool kfull = vec && k0 + T::BK <= a.K;
    if (kfull && rows_full)
      load_tile<T, T::LA, false>(a.x, a.B, a.K, m0, k0, neg, va, bad_a);
    else
      load_tile<T, T::LA, true>(a.x, a.B, a.K, m0, k0, neg, va, bad_a);
    if (kfull && cols_full)
      load_tile<T, T::LB, false>(a.w, a.M, a.K, n0, k0, neg, vb, bad_b);
    else
      load_tile<T, T::LB, true>(a.w, a.M, a.K, n0, k0, neg, vb, bad_b);
  };

  load(0);
  store_tile<T>(sm.a[0], va);
  store_tile<T>(sm.b[0], vb);
  __syncthreads();
  for (int t = 0; t < tiles_k; ++t) {
    const int cur = t & 1;
    if (t + 1 < tiles_k) load(t + 1);  // in flight while this tile is reduced
    if constexpr (Arg) {
      if (t % T::TPB == 0) {  // a block of KB inputs starts afresh
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] = neg_inf();
      }
    }
#pragma unroll
    for (int kk = 0; kk < T::BK; ++kk) {
      float ra[TM], rb[TN];
#pragma unroll
      for (int s = 0; s < T::RS; ++s) {
        const float4 q = *reinterpret_cast<const float4*>(&sm.a[cur][kk][s * (T::BM / T::RS) + ty * 4]);
        ra[4 * s] = q.x, ra[4 * s + 1] = q.y, ra[4 * s + 2] = q.z, ra[4 * s + 3] = q.w;
      }
#pragma unroll
      for (int s = 0; s < T::CS; ++s) {
        const float4 q = *reinterpret_cast<const float4*>(&sm.b[cur][kk][s * (T::BN / T::CS) + tx * 4]);
        rb[4 * s] = q.x, rb[4 * s + 1] = q.y, rb[4 * s + 2] = q.z, rb[4 * s + 3] = q.w;
      }
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaxf(acc[i][j], ra[i] + rb[j]);
    }
    if constexpr (Arg) {
      if (t % T::TPB == T::TPB - 1 || t + 1 == tiles_k) {
        const uint16_t b = uint16_t(t / T::TPB);
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j)
            if (acc[i][j] > top[i][j]) {  // strictly: the first block with the maximum stays
              top[i][j] = acc[i][j];
              sm.blk[i * TN + j][tid] = b;
            }
      }
    }
    if (t + 1 < tiles_k) {
      store_tile<T>(sm.a[cur ^ 1], va);
      store_tile<T>(sm.b[cur ^ 1], vb);
    }
    __syncthreads();
  }

#pragma unroll
  for (int it = 0; it < T::LA; ++it)
    if (bad_a[it]) sm.bad_row[(tid + it * T::THREADS) / T::KQ] = 1;
#pragma unroll
  for (int it = 0; it < T::LB; ++it)
    if (bad_b[it]) sm.bad_col[(tid + it * T::THREADS) / T::KQ] = 1;
  __syncthreads();

  // Resolve each output: its value into acc, its argmax into sm.blk's slot (as int32 below).
  int32_t out_arg[Arg ? TM : 1][Arg ? TN : 1];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int r = T::row_of(ty, i);
    const int64_t row = m0 + r;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int c = T::col_of(tx, j);
      const int64_t col = n0 + c;
      if (row >= a.B || col >= a.M) continue;
      const bool bad = (sm.bad_row[r] | sm.bad_col[c]) != 0;
      int64_t k0 = 0, k1 = 0;  // where the first maximal input is looked for
      float m;
      if constexpr (Arg) {
        m = top[i][j];
        k0 = int64_t(sm.blk[i * TN + j][tid]) * KB;
        k1 = k0 + KB < a.K ? k0 + KB : a.K;
      } else {
        m = acc[i][j];
        if (!bad && a.bias == nullptr && m != 0.f) continue;  // acc[i][j] is the answer
        if (m == 0.f) k1 = a.K;
      }
      const Resolved res = dense_resolve(a.x + row * a.K, a.w + col * a.K,
                                         a.bias != nullptr ? a.bias + col : nullptr, a.K, neg, bad,
                                         m, k0, k1);
      acc[i][j] = res.value;
      if constexpr (Arg) out_arg[i][j] = res.arg;
    }
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t row = m0 + T::row_of(ty, i);
    if (row >= a.B) continue;
#pragma unroll
    for (int s = 0; s < T::CS; ++s) {
      const int64_t col = n0 + s * (T::BN / T::CS) + tx * 4;
      float* y = a.y + row * a.M + col;
      if (vec_out && col + 3 < a.M) {
        *reinterpret_cast<float4*>(y) =
            make_float4(signed_(acc[i][4 * s], neg), signed_(acc[i][4 * s + 1], neg),
                        signed_(acc[i][4 * s + 2], neg), signed_(acc[i][4 * s + 3], neg));
        if constexpr (Arg)
          *reinterpret_cast<int4*>(a.arg + row * a.M + col) =
              make_int4(out_arg[i][4 * s], out_arg[i][4 * s + 1], out_arg[i][4 * s + 2],
                        out_arg[i][4 * s + 3]);
      } else {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          if (col + u >= a.M) break;
          y[u] = signed_(acc[i][4 * s + u], neg);
          if constexpr (Arg) a.arg[row * a.M + col + u] = out_arg[i][4 * s + u];
        }
      }
    }
  }
}

template <class T, bool Arg>
cudaError_t launch_dense(const DenseArgs& a, cudaStream_t stream) {
  const int64_t blocks = ceil_div<int64_t>(a.B, T::BM) * ceil_div<int64_t>(a.M, T::BN);
  if (blocks > int64_t(0x7fffffff)) return cudaErrorInvalidConfiguration;
  const bool vec = a.K % 4 == 0 && aligned16(a.x) && aligned16(a.w);
  const bool vec_out = a.M % 4 == 0 && aligned16(a.y) && (!Arg || aligned16(a.arg));
  dense_kernel<T, Arg><<<unsigned(blocks), T::THREADS, 0, stream>>>(a, vec, vec_out);
  return cudaGetLastError();
}

__global__ void dense_backward_kernel(const float* __restrict__ g, const int32_t* __restrict__ arg,
                                      float* __restrict__ gx, float* __restrict__ gw,
                                      float* __restrict__ gb, int64_t B, int64_t K, int64_t M,
                                      bool neg) {
  const int64_t n = B * M;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / M, o = e - b * M;
    const int32_t k = arg[e];
    const float v = signed_(g[e], neg);
    if (k >= 0) {
      if (k < K) {
        atomicAdd(gx + b * K + k, v);
        atomicAdd(gw + o * K + k, v);
      }
    } else if (gb != nullptr) {
      atomicAdd(gb + o, v);
    }
  }
}

}  // namespace

cudaError_t maxplus_forward(const DenseArgs& a, cudaStream_t stream) {
  if (a.B <= 0 || a.M <= 0 || a.K <= 0) return cudaSuccess;
  if (a.arg != nullptr && a.K > kMaxplusArgmaxInputs) return cudaErrorInvalidValue;
  return a.arg != nullptr ? launch_dense<ArgTiling, true>(a, stream)
                          : launch_dense<FastTiling, false>(a, stream);
}

cudaError_t maxplus_backward(const float* grad, const int32_t* arg, float* grad_x, float* grad_w,
                             float* grad_bias, int64_t B, int64_t K, int64_t M, bool minplus,
                             cudaStream_t stream) {
  if (B <= 0 || M <= 0) return cudaSuccess;
  dense_backward_kernel<<<grid_for(B * M), kThreads, 0, stream>>>(grad, arg, grad_x, grad_w,
                                                                  grad_bias, B, K, M, minplus);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || !minplus) return err;
  // The reference: -(scatter of -grad), i.e. untouched entries are -0.0, as on the CPU.
  if ((err = negate(grad_x, B * K, stream)) != cudaSuccess) return err;
  if ((err = negate(grad_w, M * K, stream)) != cudaSuccess) return err;
  return negate(grad_bias, grad_bias != nullptr ? M : 0, stream);
}

}  // namespace cuda
}  // namespace tropfx
