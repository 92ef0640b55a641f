// Sparse max-plus (min-plus) on the GPU: a gather, memory-bound, float32.
//
// Semantics (kernels.h; the CPU kernel in ../csrc/maxplus.h, sparse_*): along the middle dim of x
// viewed as (outer, in, inner), y[n, o, s] = max(bias[o], max_j x[n, index[o, j], s] + value[o, j]),
// scanned in that order with torch.max's rule: the bias first (it wins ties, a NaN bias is the
// result), then j = 0, 1, ...; without a bias the scan starts at -inf with argmax 0, which gives
// the same value and index as starting from the first term. Min-plus negates x, value and bias on
// the way in and y on the way out.
//
// Two layouts, each reading x from DRAM once into shared memory:
//  * rows (inner == 1, the product along the last dim): a block stages R rows of x (float4 loads)
//    and each thread computes R outputs of one output feature o: index[o, :] and value[o, :] are
//    read once (vectorized) for R rows; y is written row-major, coalesced along o.
//  * columns (inner > 1, e.g. channels of a feature map): a block stages the `in` values of 32
//    consecutive (n, s) columns (float4 loads where the columns are one aligned run); a warp
//    computes output o for its 32 columns: index and value are warp-uniform (broadcast), the
//    shared reads conflict-free, and y is written coalesced along s.
// When `in` is too large for shared memory, the same kernels gather from global memory (L1/L2).
//
// Backward: a scatter over the saved argmax (atomicAdd), then the min-plus negation.
#include "common.cuh"

namespace tropfx {
namespace cuda {
namespace {

constexpr int kColumns = 32;                 // columns of a column tile: one per lane
constexpr int kSmemBudget = 96 * 1024;       // shared memory per block: 2 blocks per SM on sm_80+

// The scan step (common.cuh, max_step) inlined for R independent outputs.
__device__ __forceinline__ void sparse_step(float t, int32_t j, float& best, int32_t& arg) {
  if (!(t <= best) && !is_nan(best)) {
    best = t;
    arg = j;
  }
}

// An index in [0, in), else 0 with bad set: the caller traps once after its loop (device_check),
// so the loop has one exit, and nothing past x is read before.
__device__ __forceinline__ int64_t checked_index(int64_t i, int64_t in, bool& bad) {
  const bool ok = uint64_t(i) < uint64_t(in);
  bad |= !ok;
  return ok ? i : 0;
}

// ------------------------------------------------------------------------------------------------
// Rows layout.

// Blocks per SM for __launch_bounds__: left to itself, ptxas aimed at 32 registers for R <= 4 and
// spilled a few bytes; 6 blocks (<= 40 registers) and, for R = 16, 4 (<= 64) fit without spills.
constexpr int rows_min_blocks(int R) { return R >= 16 ? 4 : 6; }

template <int R, bool Smem>
__global__ void __launch_bounds__(kThreads, rows_min_blocks(R)) sparse_rows_kernel(const SparseArgs a, const bool vec_x,
                                                              const bool vec_k,
                                                              const int64_t outputs_per_block) {
  extern __shared__ __align__(16) float xs[];  // Smem: R rows of +-x, (R, in)
  const bool neg = a.minplus;
  const int64_t n0 = int64_t(blockIdx.x) * R;
  const int rows = int(a.outer - n0 < R ? a.outer - n0 : R);
  const float* xb = a.x + n0 * a.in;
  if constexpr (Smem) {
    const int64_t count = int64_t(rows) * a.in;  // the rows are contiguous in x
    if (vec_x) {
      const float4* src = reinterpret_cast<const float4*>(xb);
      float4* dst = reinterpret_cast<float4*>(xs);
      for (int64_t i = threadIdx.x; i < count / 4; i += blockDim.x) {
        const float4 v = __ldg(src + i);
        dst[i] = make_float4(signed_(v.x, neg), signed_(v.y, neg), signed_(v.z, neg),
                             signed_(v.w, neg));
      }
    } else {
      for (int64_t i = threadIdx.x; i < count; i += blockDim.x) xs[i] = signed_(__ldg(xb + i), neg);
    }
    for (int64_t i = count + threadIdx.x; i < int64_t(R) * a.in; i += blockDim.x) xs[i] = 0.f;
    __syncthreads();
  }
  // Rows past the end read the last row (their results are dropped).
  auto x_at = [&](int r, int64_t i) -> float {
    if constexpr (Smem)
      return xs[r * a.in + i];
    else
      return signed_(__ldg(xb + (r < rows ? r : rows - 1) * a.in + i), neg);
  };

  const int64_t o_begin = int64_t(blockIdx.y) * outputs_per_block;
  const int64_t o_end = o_begin + outputs_per_block < a.out ? o_begin + outputs_per_block : a.out;
  for (int64_t o = o_begin + threadIdx.x; o < o_end; o += blockDim.x) {
    const int64_t* idx = a.index + o * a.k;
    const float* val = a.value + o * a.k;
    float best[R];
    int32_t arg[R];
    const float start = a.bias != nullptr ? signed_(__ldg(a.bias + o), neg) : neg_inf();
#pragma unroll
    for (int r = 0; r < R; ++r) best[r] = start, arg[r] = a.bias != nullptr ? -1 : 0;
    bool bad = false;
    int64_t j = 0;
    if (vec_k) {  // k % 4 == 0 and aligned rows: 2 x 16 bytes of indices, 16 bytes of values
      for (; j < a.k; j += 4) {
        const longlong2 i01 = __ldg(reinterpret_cast<const longlong2*>(idx + j));
        const longlong2 i23 = __ldg(reinterpret_cast<const longlong2*>(idx + j + 2));
        const float4 v = __ldg(reinterpret_cast<const float4*>(val + j));
        const int64_t ii[4] = {checked_index(i01.x, a.in, bad), checked_index(i01.y, a.in, bad),
                               checked_index(i23.x, a.in, bad), checked_index(i23.y, a.in, bad)};
        const float vv[4] = {signed_(v.x, neg), signed_(v.y, neg), signed_(v.z, neg),
                             signed_(v.w, neg)};
#pragma unroll
        for (int u = 0; u < 4; ++u)
#pragma unroll
          for (int r = 0; r < R; ++r) sparse_step(x_at(r, ii[u]) + vv[u], int32_t(j + u), best[r], arg[r]);
      }
    }
    for (; j < a.k; ++j) {
      const int64_t i = checked_index(__ldg(idx + j), a.in, bad);
      const float v = signed_(__ldg(val + j), neg);
#pragma unroll
      for (int r = 0; r < R; ++r) sparse_step(x_at(r, i) + v, int32_t(j), best[r], arg[r]);
    }
    device_check(!bad);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (r >= rows) break;
      a.y[(n0 + r) * a.out + o] = signed_(best[r], neg);
      if (a.arg != nullptr) a.arg[(n0 + r) * a.out + o] = arg[r];
    }
  }
}

template <int R, bool Smem>
cudaError_t launch_rows(const SparseArgs& a, cudaStream_t stream) {
  const int64_t row_blocks = ceil_div<int64_t>(a.outer, R);
  if (row_blocks > int64_t(0x7fffffff)) return cudaErrorInvalidConfiguration;
  // Split the outputs over blocks too when there are few row blocks (small batches).
  const int64_t want = 2 * int64_t(device_sms());
  int64_t splits = row_blocks >= want ? 1 : ceil_div<int64_t>(want, row_blocks);
  const int64_t max_splits = ceil_div<int64_t>(a.out, kThreads);
  splits = splits < max_splits ? splits : max_splits;
  splits = splits < 65535 ? splits : 65535;
  const int64_t per_block = ceil_div<int64_t>(a.out, splits);
  const size_t smem = Smem ? size_t(R) * size_t(a.in) * sizeof(float) : 0;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(sparse_rows_kernel<R, Smem>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  const bool vec_x = a.in % 4 == 0 && aligned16(a.x);
  const bool vec_k = a.k % 4 == 0 && aligned16(a.index) && aligned16(a.value);
  const dim3 grid(unsigned(row_blocks), unsigned(ceil_div<int64_t>(a.out, per_block)));
  // A thread per output feature: fewer threads when there are few outputs (a classifier head).
  const int threads = int(per_block < kThreads ? ceil_div<int64_t>(per_block, 32) * 32 : kThreads);
  sparse_rows_kernel<R, Smem><<<grid, threads, smem, stream>>>(a, vec_x, vec_k, per_block);
  return cudaGetLastError();
}

// ------------------------------------------------------------------------------------------------
// Columns layout.

template <bool Smem>
__global__ void __launch_bounds__(kThreads) sparse_cols_kernel(const SparseArgs a, const bool vec_x) {
  extern __shared__ __align__(16) float xs[];  // Smem: (in, kColumns) of +-x
  const bool neg = a.minplus;
  const int lane = int(threadIdx.x) % kColumns, warp = int(threadIdx.x) / kColumns;
  const int warps = int(blockDim.x) / kColumns;
  const int64_t total = a.outer * a.inner;
  const int64_t c0 = int64_t(blockIdx.x) * kColumns, c = c0 + lane;
  const bool valid = c < total;
  const int64_t n = (valid ? c : total - 1) / a.inner, s = (valid ? c : total - 1) % a.inner;
  const float* xc = a.x + n * a.in * a.inner + s;  // x[n, 0, s]; element i at xc[i * inner]

  if constexpr (Smem) {
    const int64_t s0 = c0 % a.inner;
    if (vec_x && s0 + kColumns <= a.inner) {  // one run of 32 aligned floats per input i
      const float* base = a.x + (c0 / a.inner) * a.in * a.inner + s0;
      constexpr int Q = kColumns / 4;
      for (int64_t e = threadIdx.x; e < a.in * Q; e += blockDim.x) {
        const int64_t i = e / Q;
        const int q = int(e % Q);
        const float4 v = __ldg(reinterpret_cast<const float4*>(base + i * a.inner) + q);
        reinterpret_cast<float4*>(xs + i * kColumns)[q] =
            make_float4(signed_(v.x, neg), signed_(v.y, neg), signed_(v.z, neg), signed_(v.w, neg));
      }
    } else {  // each thread keeps its lane's column (blockDim.x is a multiple of 32)
      for (int64_t i = warp; i < a.in; i += warps)
        xs[i * kColumns + lane] = valid ? signed_(__ldg(xc + i * a.inner), neg) : 0.f;
    }
    __syncthreads();
  }

  for (int64_t o = warp; o < a.out; o += warps) {
    const int64_t* idx = a.index + o * a.k;
    const float* val = a.value + o * a.k;
    float best = a.bias != nullptr ? signed_(__ldg(a.bias + o), neg) : neg_inf();
    int32_t arg = a.bias != nullptr ? -1 : 0;
    bool bad = false;
    for (int64_t j = 0; j < a.k; ++j) {
      const int64_t i = checked_index(__ldg(idx + j), a.in, bad);  // warp-uniform: one broadcast load
      const float xv = Smem ? xs[i * kColumns + lane] : signed_(__ldg(xc + i * a.inner), neg);
      sparse_step(xv + signed_(__ldg(val + j), neg), int32_t(j), best, arg);
    }
    device_check(!bad);
    if (valid) {
      const int64_t at = (n * a.out + o) * a.inner + s;
      a.y[at] = signed_(best, neg);
      if (a.arg != nullptr) a.arg[at] = arg;
    }
  }
}

template <bool Smem>
cudaError_t launch_cols(const SparseArgs& a, cudaStream_t stream) {
  const int64_t blocks = ceil_div<int64_t>(a.outer * a.inner, kColumns);
  if (blocks > int64_t(0x7fffffff)) return cudaErrorInvalidConfiguration;
  const size_t smem = Smem ? size_t(a.in) * kColumns * sizeof(float) : 0;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(sparse_cols_kernel<Smem>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  const bool vec_x = a.inner % 4 == 0 && aligned16(a.x);
  sparse_cols_kernel<Smem><<<unsigned(blocks), kThreads, smem, stream>>>(a, vec_x);
  return cudaGetLastError();
}

// ------------------------------------------------------------------------------------------------
// Backward.

__global__ void sparse_backward_kernel(const float* __restrict__ g, const int32_t* __restrict__ arg,
                                       const int64_t* __restrict__ index, float* __restrict__ gx,
                                       float* __restrict__ gv, float* __restrict__ gb, int64_t outer,
                                       int64_t in, int64_t inner, int64_t out, int64_t k, bool neg) {
  const int64_t total = outer * out * inner;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = e / inner, s = e - t * inner;
    const int64_t n = t / out, o = t - n * out;
    const int32_t j = arg[e];
    const float v = signed_(g[e], neg);
    if (j >= 0) {
      if (j < k) {
        bool bad = false;
        const int64_t i = checked_index(__ldg(index + o * k + j), in, bad);
        atomicAdd(gx + (n * in + i) * inner + s, v);
        atomicAdd(gv + o * k + j, v);
        device_check(!bad);
      }
    } else if (gb != nullptr) {
      atomicAdd(gb + o, v);
    }
  }
}

}  // namespace

cudaError_t sparse_maxplus_forward(const SparseArgs& a, cudaStream_t stream) {
  if (a.outer <= 0 || a.out <= 0 || a.inner <= 0) return cudaSuccess;
  if (a.k <= 0 || a.in <= 0) return cudaErrorInvalidValue;
  const int64_t budget = device_smem_optin() < kSmemBudget ? device_smem_optin() : kSmemBudget;
  const int64_t row_bytes = a.in * int64_t(sizeof(float));
  if (a.inner > 1)
    return row_bytes * kColumns <= budget ? launch_cols<true>(a, stream)
                                          : launch_cols<false>(a, stream);
  if (a.outer >= 16 && row_bytes * 16 <= budget) return launch_rows<16, true>(a, stream);
  if (a.outer >= 4 && row_bytes * 4 <= budget) return launch_rows<4, true>(a, stream);
  if (row_bytes <= budget) return launch_rows<1, true>(a, stream);
  return launch_rows<1, false>(a, stream);
}

cudaError_t sparse_maxplus_backward(const float* grad, const int32_t* arg, const int64_t* index,
                                    float* grad_x, float* grad_value, float* grad_bias,
                                    int64_t outer, int64_t in, int64_t inner, int64_t out,
                                    int64_t k, bool minplus, cudaStream_t stream) {
  const int64_t total = outer * out * inner;
  if (total <= 0) return cudaSuccess;
  sparse_backward_kernel<<<grid_for(total), kThreads, 0, stream>>>(
      grad, arg, index, grad_x, grad_value, grad_bias, outer, in, inner, out, k, minplus);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || !minplus) return err;
  if ((err = negate(grad_x, outer * in * inner, stream)) != cudaSuccess) return err;
  if ((err = negate(grad_value, out * k, stream)) != cudaSuccess) return err;
  return negate(grad_bias, grad_bias != nullptr ? out : 0, stream);
}

}  // namespace cuda
}  // namespace tropfx
