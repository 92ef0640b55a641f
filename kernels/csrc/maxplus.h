// Dense and sparse max-plus (min-plus) products: torch-free kernels on raw pointers.
//
// Semantics (tropfx.nn.functional, which these match bit for bit):
//   dense:  y[b, o] = max(max_k x[b, k] + w[o, k], bias[o]); argmax[b, o] = the first maximal k,
//           or -1 when the bias wins (it wins ties; a NaN bias never wins: ``bias >= y`` is false);
//   sparse: y[n, o, s] = max(bias[o], max_j x[n, index[o, j], s] + value[o, j]); the bias comes
//           first, so it wins ties, and a NaN bias is the result (torch.max's first NaN);
//   a NaN term wins the max (the first NaN, as torch.max); min-plus is computed as the reference
//   does, -maxplus(-x, -w, -bias), which differs from a direct min only in the sign of zeros.
//
// The dense product is a GEMM on the (max, +) semiring: weights are packed in panels of NR
// outputs, an MR x NR tile of maxima lives in vector registers, and x entries are broadcast.
// The argmax costs little: the tile tracks only which block of KB inputs held each maximum, and
// the first maximal input of that block is found again at the end (a scan of KB terms).
// Rows of x holding NaN or +inf (and weights holding them) take an exact scalar path instead,
// since vmaxps-style maxima do not propagate NaN.
//
// Threading is the caller's: every function works on a range (rows, panels or outputs) and the
// torch binding splits ranges with at::parallel_for.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "semantics.h"
#include "simd.h"

namespace tropfx {

template <typename T>
struct DenseArgs {
  const T* x;     // (B, K)
  const T* w;     // (M, K)
  const T* bias;  // (M) or nullptr
  T* y;           // (B, M)
  int32_t* arg;   // (B, M) or nullptr when no argmax is wanted
  int64_t B, K, M;
  bool minplus;
};

template <typename T>
struct DenseTiling {
  static constexpr int L = Simd<T>::L;
  static constexpr int MR = 6;        // rows of x per register tile (6 x 2 vectors: 12 of the 16
  static constexpr int NV = 2;        // AVX2 registers hold maxima; measured best on Zen 3)
  static constexpr int NR = NV * L;   // outputs per panel
  static constexpr int KB = 8;        // argmax block: the tile remembers the block, not the input
  static constexpr int64_t MB = 48;   // rows of x per task (a multiple of MR)
  static int64_t panels(int64_t M) { return (M + NR - 1) / NR; }
};

template <typename T>
inline T signed_(T v, bool neg) {
  return neg ? -v : v;
}

#if defined(__AVX2__)
// 8 x 8 float transpose in registers: r[j] lane i <-> r[i] lane j.
inline void transpose8x8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int j = 0; j < 8; j += 2) {
    t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]);
    t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]);
  }
  for (int j = 0; j < 8; j += 4) {
    u[j] = _mm256_shuffle_ps(t[j], t[j + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[j + 1] = _mm256_shuffle_ps(t[j], t[j + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[j + 2] = _mm256_shuffle_ps(t[j + 1], t[j + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[j + 3] = _mm256_shuffle_ps(t[j + 1], t[j + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x20);
    r[j + 4] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x31);
  }
}
#endif

// Whether some lane of the comparison mask m is set.
template <typename M>
inline bool any_lane(M m) {
  for (int l = 0; l < int(sizeof(M) / sizeof(m[0])); ++l)
    if (m[l]) return true;
  return false;
}

// dst[i] = +-src[i] for i < n; returns false if some of them spoils a max (NaN or +inf). Vectors
// of L, the check accumulated as a lane mask (the loop has no branch).
template <typename T>
bool copy_signed(const T* __restrict src, int64_t n, bool neg, T* __restrict dst) {
  using S = Simd<T>;
  using V = typename S::V;
  using M = typename S::M;
  constexpr int L = S::L;
  const V inf = splat<V>(kInf<T>);
  M bad = splat<M>(0);
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    V v = loadu<V>(src + i);
    if (neg) v = -v;
    bad |= (v != v) | (v == inf);
    storeu(dst + i, v);
  }
  bool clean = !any_lane(bad);
  for (; i < n; ++i) {
    dst[i] = signed_(src[i], neg);
    clean &= !spoils_max(dst[i]);
  }
  return clean;
}

// Pack panels [p0, p1) of c = +-w as (panel, K, NR), outputs past M set to -inf. Returns false if
// some c is NaN or +inf (then every row takes the exact path). Float with AVX2: 8 outputs x 8
// inputs at a time through a register transpose; otherwise in blocks of KC inputs, so that the
// panel's lines being written stay in L1 while the NR source rows are read.
template <typename T>
bool dense_pack(const DenseArgs<T>& a, T* packed, int64_t p0, int64_t p1) {
  constexpr int NR = DenseTiling<T>::NR;
  constexpr int64_t KC = 64;
  const int64_t K = a.K;
  bool clean = true;
  for (int64_t p = p0; p < p1; ++p) {
    T* dst = packed + p * K * NR;
    const int full = int(std::clamp<int64_t>(a.M - p * NR, 0, NR));
    int l0 = 0;
#if defined(__AVX2__)
    if constexpr (std::is_same_v<T, float>) {
      const __m256 sign = _mm256_set1_ps(a.minplus ? -0.0f : 0.0f), inf = _mm256_set1_ps(kInf<float>);
      __m256 bad = _mm256_setzero_ps();
      for (; l0 + 8 <= full; l0 += 8) {
        const float* src = a.w + (p * NR + l0) * K;
        int64_t k = 0;
        for (; k + 8 <= K; k += 8) {
          __m256 r[8];
          for (int j = 0; j < 8; ++j) {
            r[j] = _mm256_xor_ps(_mm256_loadu_ps(src + j * K + k), sign);
            bad = _mm256_or_ps(bad, _mm256_or_ps(_mm256_cmp_ps(r[j], r[j], _CMP_UNORD_Q),
                                                 _mm256_cmp_ps(r[j], inf, _CMP_EQ_OQ)));
          }
          transpose8x8(r);
          for (int j = 0; j < 8; ++j) _mm256_storeu_ps(dst + (k + j) * NR + l0, r[j]);
        }
        for (; k < K; ++k)
          for (int j = 0; j < 8; ++j) {
            const float c = signed_(src[j * K + k], a.minplus);
            clean &= !spoils_max(c);
            dst[k * NR + l0 + j] = c;
          }
      }
      clean &= _mm256_movemask_ps(bad) == 0;
    }
#endif
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      const int64_t k1 = std::min(K, k0 + KC);
      for (int l = l0; l < NR; ++l) {
        const int64_t o = p * NR + l;
        if (o < a.M) {
          const T* src = a.w + o * K;
          for (int64_t k = k0; k < k1; ++k) {
            const T c = signed_(src[k], a.minplus);
            clean &= !spoils_max(c);
            dst[k * NR + l] = c;
          }
        } else {
          for (int64_t k = k0; k < k1; ++k) dst[k * NR + l] = -kInf<T>;
        }
      }
    }
  }
  return clean;
}

// R rows of ``rows`` (stride K) against one panel; per lane: the maximum, and with Arg the index
// of the first block of KB inputs that reached it.
template <typename T, int R, bool Arg>
inline void dense_tile(const T* rows, int64_t K, const T* panel, T* best, int32_t* block) {
  using S = Simd<T>;
  using V = typename S::V;
  using M = typename S::M;
  constexpr int L = S::L, NV = DenseTiling<T>::NV, NR = DenseTiling<T>::NR;
  constexpr int KB = DenseTiling<T>::KB;
  const V ninf = splat<V>(-kInf<T>);
  V acc[R][NV];
  if constexpr (!Arg) {
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = ninf;
    for (int64_t k = 0; k < K; ++k) {
      V wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = loadu<V>(panel + k * NR + v * L);
      for (int r = 0; r < R; ++r) {
        const V xb = splat<V>(rows[r * K + k]);
        for (int v = 0; v < NV; ++v) {
          const V t = xb + wv[v];
          acc[r][v] = t > acc[r][v] ? t : acc[r][v];  // keeps the first of equal values
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) storeu(best + r * NR + v * L, acc[r][v]);
  } else {
    // One running maximum per lane, as without the argmax; at the end of each block of KB
    // inputs, the lanes whose maximum grew (strictly: the first block reaching it is kept) record
    // the block. The maximum at the block's start and the block indices live in memory (the
    // compare reads it, the mask writes it): the loop's registers stay the tile's.
    alignas(64) T start[R * NR];
    alignas(64) typename S::Index blocks[R * NR];  // the lane type of M
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) {
        acc[r][v] = ninf;
        storeu(start + r * NR + v * L, ninf);
        storeu(blocks + r * NR + v * L, splat<M>(0));
      }
    int32_t b = 0;
    for (int64_t k0 = 0; k0 < K; k0 += KB, ++b) {
      const int64_t k1 = std::min<int64_t>(K, k0 + KB);
      for (int64_t k = k0; k < k1; ++k) {
        V wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = loadu<V>(panel + k * NR + v * L);
        for (int r = 0; r < R; ++r) {
          const V xb = splat<V>(rows[r * K + k]);
          for (int v = 0; v < NV; ++v) {
            const V t = xb + wv[v];
            acc[r][v] = t > acc[r][v] ? t : acc[r][v];
          }
        }
      }
      const M bv = splat<M>(b);
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) {
          T* st = start + r * NR + v * L;
          typename S::Index* bl = blocks + r * NR + v * L;
          const M grew = acc[r][v] > loadu<V>(st);
          storeu(bl, grew ? bv : loadu<M>(bl));
          storeu(st, acc[r][v]);
        }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) {
        storeu(best + r * NR + v * L, acc[r][v]);
        for (int l = 0; l < L; ++l) block[r * NR + v * L + l] = int32_t(blocks[r * NR + v * L + l]);
      }
  }
}

// A tile of ``rows_in_tile`` <= R rows: the register tile of exactly that many rows.
template <typename T, bool Arg, int R = DenseTiling<T>::MR>
inline void dense_tile_rows(int rows_in_tile, const T* rows, int64_t K, const T* panel, T* best,
                            int32_t* block) {
  if constexpr (R > 1) {
    if (rows_in_tile < R) return dense_tile_rows<T, Arg, R - 1>(rows_in_tile, rows, K, panel, best, block);
  }
  dense_tile<T, R, Arg>(rows, K, panel, best, block);
}

// The bias (it wins ties, never when NaN), the sign of min-plus, and the stores.
template <typename T>
inline void dense_finish(const DenseArgs<T>& a, int64_t row, int64_t o, T best, int32_t arg) {
  if (a.bias != nullptr) {
    const T e = signed_(a.bias[o], a.minplus);
    if (e >= best) {
      best = e;
      arg = -1;
    }
  }
  a.y[row * a.M + o] = signed_(best, a.minplus);
  if (a.arg != nullptr) a.arg[row * a.M + o] = arg;
}

// Torch's reduction literally: the exact path for rows (or weights) with NaN or +inf.
template <typename T>
inline void dense_exact(const DenseArgs<T>& a, int64_t row, int64_t o) {
  const T* xr = a.x + row * a.K;
  const T* wr = a.w + o * a.K;
  const bool n = a.minplus;
  T best = signed_(xr[0], n) + signed_(wr[0], n);
  int32_t arg = 0;
  for (int64_t k = 1; k < a.K && !is_nan(best); ++k)
    extreme_step<false>(signed_(xr[k], n) + signed_(wr[k], n), int32_t(k), best, arg);
  dense_finish(a, row, o, best, arg);
}

#if defined(__AVX2__)
// first_reaching for a whole block of 8 floats: one gather and one vector compare; 8 if none.
inline int first_of_8(const float* x, const float* c, float m) {
  constexpr int NR = DenseTiling<float>::NR;
  const __m256i at = _mm256_setr_epi32(0, NR, 2 * NR, 3 * NR, 4 * NR, 5 * NR, 6 * NR, 7 * NR);
  const __m256 t = _mm256_add_ps(_mm256_loadu_ps(x), _mm256_i32gather_ps(c, at, 4));
  const unsigned hits = unsigned(_mm256_movemask_ps(_mm256_cmp_ps(t, _mm256_set1_ps(m), _CMP_EQ_OQ)));
  return __builtin_ctz(hits | 0x100u);
}
#endif

// The first k < n with x[k] + c[k * NR] == m, or n if none (c: the packed panel the tile read,
// hot in cache): the tile's additions again (x + c, no contraction), so the maximum is found
// exactly.
template <typename T>
inline int64_t first_reaching(const T* x, const T* c, int64_t n, T m) {
  constexpr int NR = DenseTiling<T>::NR;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    if (n == 8) return first_of_8(x, c, m);
  }
#endif
  for (int64_t k = 0; k < n; ++k)
    if (x[k] + c[k * NR] == m) return k;
  return n;
}

// The argmax of lane l of a panel from the tile's winning block: its first input reaching m.
template <typename T>
inline int32_t dense_arg(const DenseArgs<T>& a, const T* xr, const T* panel, int l, int32_t block,
                         T m) {
  constexpr int KB = DenseTiling<T>::KB, NR = DenseTiling<T>::NR;
  const int64_t k0 = int64_t(block) * KB, n = std::min<int64_t>(a.K - k0, KB);
  const int64_t first = first_reaching(xr + k0, panel + k0 * NR + l, n, m);
  return int32_t(k0 + (first < n ? first : 0));
}

// A whole panel of one row (NR outputs from o0): the bias, the sign and the stores in vectors;
// the argmax scan only for the outputs the bias did not win.
template <typename T>
inline void dense_finish_panel(const DenseArgs<T>& a, int64_t row, int64_t o0, const T* xr,
                               const T* panel, const T* best, const int32_t* block) {
  using S = Simd<T>;
  using V = typename S::V;
  using M = typename S::M;
  constexpr int L = S::L, NV = DenseTiling<T>::NV;
  for (int v = 0; v < NV; ++v) {
    const int64_t o = o0 + v * L;
    V m = loadu<V>(best + v * L);
    M win = splat<M>(0);
    if (a.bias != nullptr) {
      V e = loadu<V>(a.bias + o);
      if (a.minplus) e = -e;
      win = e >= m;  // the bias wins ties, never when NaN
      m = win ? e : m;
    }
    storeu(a.y + row * a.M + o, a.minplus ? -m : m);
    if (a.arg != nullptr) {
      // Lane by lane from memory (best, bias), not from the vectors just computed: reading a
      // lane of a vector spilled a moment before stalls on store forwarding.
      int32_t* ar = a.arg + row * a.M + o;
#if defined(__AVX2__)
      // Whole blocks of 8 floats (the common case): the re-scans as one straight loop, without
      // dense_arg's per-output block bounds (the bias rarely wins, so its branch predicts well).
      if constexpr (std::is_same_v<T, float> && DenseTiling<T>::KB == 8) {
        if (a.K % 8 == 0) {
          constexpr int NR = DenseTiling<T>::NR;
          for (int l = 0; l < L; ++l) {
            const int i = v * L + l;
            if (a.bias != nullptr && signed_(a.bias[o + l], a.minplus) >= best[i]) {
              ar[l] = -1;
              continue;
            }
            const int64_t k0 = int64_t(block[i]) * 8;
            ar[l] = int32_t(k0) + (first_of_8(xr + k0, panel + k0 * NR + i, best[i]) & 7);
          }
          continue;
        }
      }
#endif
      for (int l = 0; l < L; ++l) {
        const T t = best[v * L + l];
        ar[l] = a.bias != nullptr && signed_(a.bias[o + l], a.minplus) >= t
                    ? -1 : dense_arg(a, xr, panel, v * L + l, block[v * L + l], t);
      }
    }
  }
}

// Rows [r0, r1) against panels [p0, p1) of the packed weights.
template <typename T>
void dense_forward(const DenseArgs<T>& a, const T* packed, bool weights_clean, int64_t r0,
                   int64_t r1, int64_t p0, int64_t p1) {
  constexpr int MR = DenseTiling<T>::MR, NR = DenseTiling<T>::NR;
  const int64_t K = a.K;
  // +-x of the clean rows, contiguous: the worker thread's buffer, kept between calls (a fresh one
  // of 48 rows x K = 1024 floats would come from mmap and page-fault on every task).
  thread_local std::vector<T> rows;
  if (rows.size() < size_t((r1 - r0) * K)) rows.resize((r1 - r0) * K);
  std::vector<int64_t> clean, spoiled;
  for (int64_t r = r0; r < r1; ++r) {
    if (copy_signed(a.x + r * K, K, a.minplus, rows.data() + clean.size() * K) && weights_clean)
      clean.push_back(r);
    else
      spoiled.push_back(r);
  }
  const bool want_arg = a.arg != nullptr;
  T best[MR * NR];
  int32_t block[MR * NR];
  for (int64_t p = p0; p < p1; ++p) {
    const T* panel = packed + p * K * NR;
    const int lanes = int(std::min<int64_t>(NR, a.M - p * NR));
    for (size_t t = 0; t < clean.size(); t += MR) {
      const int rt = int(std::min<size_t>(MR, clean.size() - t));
      const T* tile_rows = rows.data() + t * K;
      if (want_arg)
        dense_tile_rows<T, true>(rt, tile_rows, K, panel, best, block);
      else
        dense_tile_rows<T, false>(rt, tile_rows, K, panel, best, block);
      for (int r = 0; r < rt; ++r) {
        const T* xr = tile_rows + r * K;
        if (lanes == NR) {
          dense_finish_panel(a, clean[t + r], p * NR, xr, panel, best + r * NR, block + r * NR);
          continue;
        }
        for (int l = 0; l < lanes; ++l) {
          const T m = best[r * NR + l];
          const int32_t arg = want_arg ? dense_arg(a, xr, panel, l, block[r * NR + l], m) : 0;
          dense_finish(a, clean[t + r], p * NR + l, m, arg);
        }
      }
    }
    for (int64_t r : spoiled)
      for (int l = 0; l < lanes; ++l) dense_exact(a, r, p * NR + l);
  }
}

// Whether a saved argmax q is a term in [0, n): one unsigned comparison, which replaces the
// q >= 0 test of the loops below, so that the range check costs nothing; anything else must be
// -1 (the bias won) or the backward reports it (the binding then raises, naming the value).
inline bool term(int32_t q, int64_t n) { return uint64_t(int64_t(q)) < uint64_t(n); }

// grad_x rows [r0, r1): the scatter of grad_y over the saved argmax, outputs in increasing order
// (the order of the reference's scatter_add_, so sums round identically). grad_x is zero-filled.
// False if an argmax is outside [-1, K) (it is skipped: nothing is written out of bounds).
template <typename T>
bool dense_backward_input(const T* g, const int32_t* arg, T* gx, int64_t K, int64_t M, bool minplus,
                          int64_t r0, int64_t r1) {
  bool ok = true;
  for (int64_t r = r0; r < r1; ++r) {
    T* out = gx + r * K;
    const T* gr = g + r * M;
    const int32_t* ar = arg + r * M;
    for (int64_t o = 0; o < M; ++o) {
      if (term(ar[o], K))
        out[ar[o]] += signed_(gr[o], minplus);
      else
        ok &= ar[o] == -1;
    }
    if (minplus)
      for (int64_t k = 0; k < K; ++k) out[k] = -out[k];
  }
  return ok;
}

// grad_w (and grad_bias) of outputs [o0, o1), batch rows in increasing order (the reference's
// index_add_ order). Both are zero-filled. argmax must be in [-1, K): dense_backward_input, which
// runs first over every row, has checked it (the binding raises before calling this otherwise).
template <typename T>
void dense_backward_weight(const T* g, const int32_t* arg, T* gw, T* gb, int64_t B, int64_t K,
                           int64_t M, bool minplus, int64_t o0, int64_t o1) {
  for (int64_t b = 0; b < B; ++b) {
    const T* gr = g + b * M;
    const int32_t* ar = arg + b * M;
    for (int64_t o = o0; o < o1; ++o) {
      const T v = signed_(gr[o], minplus);
      if (ar[o] >= 0)
        gw[o * K + ar[o]] += v;
      else if (gb != nullptr)
        gb[o] += v;
    }
  }
  if (minplus) {
    for (int64_t i = o0 * K; i < o1 * K; ++i) gw[i] = -gw[i];
    if (gb != nullptr)
      for (int64_t o = o0; o < o1; ++o) gb[o] = -gb[o];
  }
}

// ------------------------------------------------------------------------------------------------
// Sparse: x viewed as (outer, in, inner); the product runs along ``in``.

template <typename T>
struct SparseArgs {
  const T* x;             // (outer, in, inner)
  const int64_t* index;   // (out, k), entries in [0, in)
  const T* value;         // (out, k)
  const T* bias;          // (out) or nullptr
  T* y;                   // (outer, out, inner)
  int32_t* arg;           // (outer, out, inner) or nullptr: j, or -1 for the bias
  int64_t outer, in, inner, out, k;
  bool minplus;
};

// One output, torch's reduction literally (rows with NaN or +inf): input i of the row at
// xr[i * stride] (stride = inner).
template <typename T>
inline void sparse_exact(const SparseArgs<T>& a, const T* xr, int64_t o, T& best_out,
                         int32_t& arg_out, int64_t stride = 1) {
  const bool n = a.minplus;
  const int64_t* idx = a.index + o * a.k;
  const T* val = a.value + o * a.k;
  T best;
  int32_t arg;
  int64_t j = 0;
  if (a.bias != nullptr) {
    best = signed_(a.bias[o], n);
    arg = -1;
  } else {
    best = signed_(xr[idx[0] * stride], n) + signed_(val[0], n);
    arg = 0;
    j = 1;
  }
  for (; j < a.k && !is_nan(best); ++j)
    extreme_step<false>(signed_(xr[idx[j] * stride], n) + signed_(val[j], n), int32_t(j), best,
                        arg);
  best_out = signed_(best, n);
  arg_out = arg;
}

// Row r against outputs [0, out) by ordered comparisons (a NaN bias stays, as ``v > NaN`` is
// false), which are torch's semantics unless some term x + value is NaN: returns whether one was
// (the caller then recomputes the row exactly). Rows not in a block of 8 (float) and double rows. ``idx`` / ``val``: int32 indices and +-values
// laid out (k, out), term j of output o at j * out + o.
template <typename T, bool Neg, bool Arg, int KK>  // KK: k known at compile time (small k), or 0
bool sparse_fast_row(const SparseArgs<T>& a, const int32_t* __restrict idx,
                     const T* __restrict val, const T* __restrict bias, int64_t r) {
  const T* __restrict xr = a.x + r * a.in;
  T* __restrict yr = a.y + r * a.out;
  int32_t* __restrict ar = Arg ? a.arg + r * a.out : nullptr;
  const int64_t k = KK > 0 ? KK : a.k, out = a.out;
  bool nan_term = false;
  for (int64_t o = 0; o < out; ++o) {
    T best;
    int32_t arg = -1;
    int64_t j = 0;
    if (bias != nullptr) {
      best = bias[o];
    } else {
      best = (Neg ? -xr[idx[o]] : xr[idx[o]]) + val[o];
      nan_term |= is_nan(best);
      arg = 0;
      j = 1;
    }
    for (; j < k; ++j) {  // branch-free: the data decide, a branch would mispredict
      const int32_t i = idx[j * out + o];
      const T v = (Neg ? -xr[i] : xr[i]) + val[j * out + o];
      nan_term |= is_nan(v);
      if constexpr (Arg) {
        const int32_t take = -int32_t(v > best);
        arg = (int32_t(j) & take) | (arg & ~take);
      }
      best = v > best ? v : best;  // maxss
    }
    yr[o] = Neg ? -best : best;
    if constexpr (Arg) ar[o] = arg;
  }
  return nan_term;
}

#if defined(__AVX2__)
// A (rows x cols) block of a row-major matrix (leading dimension ld) into (cols x 8) with rows
// as the fast dimension: dst[c * 8 + r] = src[r * ld + c], for 8 rows; cols a multiple of 8 in
// whole tiles, the rest one by one.
template <typename U>
inline void rows8_to_columns(const U* src, int64_t ld, int64_t cols, U* dst) {
  int64_t c = 0;
  for (; c + 8 <= cols; c += 8) {
    __m256 r[8];
    for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(reinterpret_cast<const float*>(src + j * ld + c));
    transpose8x8(r);
    for (int j = 0; j < 8; ++j) _mm256_storeu_ps(reinterpret_cast<float*>(dst + (c + j) * 8), r[j]);
  }
  for (; c < cols; ++c)
    for (int j = 0; j < 8; ++j) dst[c * 8 + j] = src[j * ld + c];
}

// The inverse: src (cols x 8) back into 8 rows of dst (leading dimension ld).
template <typename U>
inline void columns_to_rows8(const U* src, int64_t cols, U* dst, int64_t ld) {
  int64_t c = 0;
  for (; c + 8 <= cols; c += 8) {
    __m256 r[8];
    for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(reinterpret_cast<const float*>(src + (c + j) * 8));
    transpose8x8(r);
    for (int j = 0; j < 8; ++j) _mm256_storeu_ps(reinterpret_cast<float*>(dst + j * ld + c), r[j]);
  }
  for (; c < cols; ++c)
    for (int j = 0; j < 8; ++j) dst[j * ld + c] = src[c * 8 + j];
}

// Rows r .. r + 7 at once, float, by transposing them: the 8 rows' x at input i is one vector
// (xt + 8 i), so each term is a plain load instead of a gather; the outputs come back through the
// inverse transpose. Returns whether some term was NaN (the caller redoes those rows exactly).
template <bool Neg, bool Arg>
bool sparse_rows8_avx2(const SparseArgs<float>& a, const int32_t* __restrict idx,
                       const float* __restrict val, const float* __restrict bias, int64_t r,
                       float* __restrict xt, float* __restrict yt, int32_t* __restrict at) {
  const int64_t k = a.k, out = a.out;
  rows8_to_columns(a.x + r * a.in, a.in, a.in, xt);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 nan = _mm256_setzero_ps();
  for (int64_t o = 0; o < out; ++o) {
    auto term = [&](int64_t j) __attribute__((always_inline)) {
      __m256 xv = _mm256_load_ps(xt + 8 * int64_t(idx[j * out + o]));
      if constexpr (Neg) xv = _mm256_xor_ps(xv, sign);
      const __m256 v = _mm256_add_ps(xv, _mm256_set1_ps(val[j * out + o]));
      nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      return v;
    };
    __m256 best;
    __m256i arg = _mm256_set1_epi32(-1);
    int64_t j = 0;
    if (bias != nullptr) {
      best = _mm256_set1_ps(bias[o]);
    } else {
      best = term(0);
      arg = _mm256_setzero_si256();
      j = 1;
    }
    for (; j < k; ++j) {
      const __m256 v = term(j);
      if constexpr (Arg)
        arg = _mm256_blendv_epi8(arg, _mm256_set1_epi32(int32_t(j)),
                                 _mm256_castps_si256(_mm256_cmp_ps(v, best, _CMP_GT_OQ)));
      best = _mm256_max_ps(v, best);  // v > best ? v : best, as the scalar code
    }
    if constexpr (Neg) best = _mm256_xor_ps(best, sign);
    _mm256_store_ps(yt + 8 * o, best);
    if constexpr (Arg) _mm256_store_si256(reinterpret_cast<__m256i*>(at + 8 * o), arg);
  }
  columns_to_rows8(yt, out, a.y + r * out, out);
  if constexpr (Arg) columns_to_rows8(at, out, a.arg + r * out, out);
  return _mm256_movemask_ps(nan) != 0;
}
#endif

// Rows [r0, r1) of the inner == 1 layout (the product along the last dim). ``idx`` / ``val`` /
// ``bias``: the int32 indices and the values, (k, out), and the bias, with the sign of min-plus
// applied. Each row runs the fast path, and again exactly if a NaN term arose (no separate scan
// of x for NaN / inf: the row is read once, by the gathers).
template <typename T>
void sparse_forward_rows(const SparseArgs<T>& a, const int32_t* idx, const T* val, const T* bias,
                         int64_t r0, int64_t r1) {
  using Fn = bool (*)(const SparseArgs<T>&, const int32_t*, const T*, const T*, int64_t);
#define TROPFX_SPARSE_ROW(NEG, ARG)                                                                  \
  {sparse_fast_row<T, NEG, ARG, 0>, sparse_fast_row<T, NEG, ARG, 1>,                               \
   sparse_fast_row<T, NEG, ARG, 2>, sparse_fast_row<T, NEG, ARG, 3>,                               \
   sparse_fast_row<T, NEG, ARG, 4>}
  static constexpr Fn fns[2][2][5] = {{TROPFX_SPARSE_ROW(false, false), TROPFX_SPARSE_ROW(false, true)},
                                      {TROPFX_SPARSE_ROW(true, false), TROPFX_SPARSE_ROW(true, true)}};
#undef TROPFX_SPARSE_ROW
  const Fn fn = fns[a.minplus][a.arg != nullptr][a.k <= 4 ? a.k : 0];
  auto exact_row = [&](int64_t r) {
    const T* xr = a.x + r * a.in;
    for (int64_t o = 0; o < a.out; ++o) {
      T v;
      int32_t arg;
      sparse_exact(a, xr, o, v, arg);
      a.y[r * a.out + o] = v;
      if (a.arg != nullptr) a.arg[r * a.out + o] = arg;
    }
  };
  int64_t r = r0;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    if (r1 - r0 >= 8) {  // blocks of 8 rows, transposed: no gathers
      using Fn8 = bool (*)(const SparseArgs<float>&, const int32_t*, const float*, const float*,
                           int64_t, float*, float*, int32_t*);
      static constexpr Fn8 fns8[2][2] = {{sparse_rows8_avx2<false, false>, sparse_rows8_avx2<false, true>},
                                         {sparse_rows8_avx2<true, false>, sparse_rows8_avx2<true, true>}};
      const Fn8 fn8 = fns8[a.minplus][a.arg != nullptr];
      std::vector<float> xt(a.in * 8 + 8), yt(a.out * 8 + 8);
      std::vector<int32_t> at(a.arg != nullptr ? a.out * 8 + 8 : 0);
      auto aligned = [](auto* p) { return p + (-(reinterpret_cast<uintptr_t>(p) / sizeof(*p)) & 7u); };
      float* xtp = aligned(xt.data());
      float* ytp = aligned(yt.data());
      int32_t* atp = a.arg != nullptr ? aligned(at.data()) : nullptr;
      for (; r + 8 <= r1; r += 8)
        if (fn8(a, idx, val, bias, r, xtp, ytp, atp))
          for (int64_t q = r; q < r + 8; ++q) exact_row(q);
    }
  }
#endif
  for (; r < r1; ++r)
    if (fn(a, idx, val, bias, r)) exact_row(r);
}

// Pairs (n, o) in [t0, t1) of the inner > 1 layout, vectorized along inner (NaN-aware masks).
template <typename T>
void sparse_forward_inner(const SparseArgs<T>& a, int64_t t0, int64_t t1) {
  using S = Simd<T>;
  using V = typename S::V;
  using M = typename S::M;
  constexpr int L = S::L;
  const bool n = a.minplus;
  const int64_t inner = a.inner;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t / a.out, o = t % a.out;
    const int64_t* idx = a.index + o * a.k;
    const T* val = a.value + o * a.k;
    const T* xb = a.x + b * a.in * inner;
    T* yr = a.y + t * inner;
    int32_t* ar = a.arg != nullptr ? a.arg + t * inner : nullptr;
    int64_t s = 0;
    for (; s + L <= inner; s += L) {
      V best;
      M arg;
      int64_t j = 0;
      if (a.bias != nullptr) {
        best = splat<V>(signed_(a.bias[o], n));
        arg = splat<M>(-1);
      } else {
        best = loadu<V>(xb + idx[0] * inner + s);
        best = (n ? -best : best) + splat<V>(signed_(val[0], n));
        arg = splat<M>(0);
        j = 1;
      }
      for (; j < a.k; ++j) {
        V v = loadu<V>(xb + idx[j] * inner + s);
        v = (n ? -v : v) + splat<V>(signed_(val[j], n));
        const M m = ~(v <= best) & (best == best);  // extreme_step, lane-wise
        best = m ? v : best;
        arg = m ? splat<M>(j) : arg;
      }
      storeu(yr + s, n ? -best : best);
      if (ar != nullptr)
        for (int l = 0; l < L; ++l) ar[s + l] = int32_t(arg[l]);
    }
    for (; s < inner; ++s) {  // the tail, scalar
      int32_t arg;
      sparse_exact(a, xb + s, o, yr[s], arg, inner);
      if (ar != nullptr) ar[s] = arg;
    }
  }
}

// grad_x for outer rows [n0, n1) and inner positions [s0, s1): outputs in increasing order per
// destination (the reference's index_add_ order). grad_x is zero-filled. index is in [0, in)
// (checked by the binding); false if an argmax is outside [-1, k) (skipped).
template <typename T>
bool sparse_backward_input(const T* g, const int32_t* arg, const int64_t* index, T* gx,
                           int64_t in, int64_t inner, int64_t out, int64_t k, bool minplus,
                           int64_t n0, int64_t n1, int64_t s0, int64_t s1) {
  bool ok = true;
  for (int64_t b = n0; b < n1; ++b) {
    T* gxb = gx + b * in * inner;
    for (int64_t o = 0; o < out; ++o) {
      const T* gr = g + (b * out + o) * inner;
      const int32_t* ar = arg + (b * out + o) * inner;
      const int64_t* idx = index + o * k;
      for (int64_t s = s0; s < s1; ++s) {
        if (term(ar[s], k))
          gxb[idx[ar[s]] * inner + s] += signed_(gr[s], minplus);
        else
          ok &= ar[s] == -1;
      }
    }
    if (minplus)
      for (int64_t i = 0; i < in; ++i)
        for (int64_t s = s0; s < s1; ++s) gxb[i * inner + s] = -gxb[i * inner + s];
  }
  return ok;
}

// grad_value and grad_bias of outputs [o0, o1), summed over (outer, inner) in order. Zero-filled.
// argmax must be in [-1, k): sparse_backward_input, which runs first, has checked it.
template <typename T>
void sparse_backward_value(const T* g, const int32_t* arg, T* gv, T* gb, int64_t outer,
                           int64_t inner, int64_t out, int64_t k, bool minplus, int64_t o0,
                           int64_t o1) {
  for (int64_t o = o0; o < o1; ++o) {
    T* gvo = gv + o * k;
    T bias_sum = T(0);
    for (int64_t b = 0; b < outer; ++b) {
      const T* gr = g + (b * out + o) * inner;
      const int32_t* ar = arg + (b * out + o) * inner;
      for (int64_t s = 0; s < inner; ++s) {
        const T v = signed_(gr[s], minplus);
        if (ar[s] >= 0)
          gvo[ar[s]] += v;
        else
          bias_sum += v;
      }
    }
    if (gb != nullptr) gb[o] = signed_(bias_sum, minplus);
    if (minplus)
      for (int64_t j = 0; j < k; ++j) gvo[j] = -gvo[j];
  }
}

// Whether +-v holds no value that can make a NaN term (see semantics.h).
template <typename T>
bool all_clean(const T* v, int64_t n, bool negate) {
  for (int64_t i = 0; i < n; ++i)
    if (spoils_max(signed_(v[i], negate))) return false;
  return true;
}

// Explicit instantiations live in maxplus.cpp (torch-free, compiled in parallel with the
// bindings); other translation units only declare them.
#define TROPFX_MAXPLUS_TEMPLATES(X, T)                                                             \
  X template bool all_clean<T>(const T*, int64_t, bool);                                           \
  X template bool dense_pack<T>(const DenseArgs<T>&, T*, int64_t, int64_t);                        \
  X template void dense_forward<T>(const DenseArgs<T>&, const T*, bool, int64_t, int64_t, int64_t, \
                                   int64_t);                                                       \
  X template bool dense_backward_input<T>(const T*, const int32_t*, T*, int64_t, int64_t, bool,    \
                                          int64_t, int64_t);                                       \
  X template void dense_backward_weight<T>(const T*, const int32_t*, T*, T*, int64_t, int64_t,     \
                                           int64_t, bool, int64_t, int64_t);                       \
  X template void sparse_forward_rows<T>(const SparseArgs<T>&, const int32_t*, const T*, const T*, \
                                         int64_t, int64_t);                                        \
  X template void sparse_forward_inner<T>(const SparseArgs<T>&, int64_t, int64_t);                 \
  X template bool sparse_backward_input<T>(const T*, const int32_t*, const int64_t*, T*, int64_t,  \
                                           int64_t, int64_t, int64_t, bool, int64_t, int64_t,      \
                                           int64_t, int64_t);                                      \
  X template void sparse_backward_value<T>(const T*, const int32_t*, T*, T*, int64_t, int64_t,     \
                                           int64_t, int64_t, bool, int64_t, int64_t);

#if !defined(TROPFX_INSTANTIATE)
TROPFX_MAXPLUS_TEMPLATES(extern, float)
TROPFX_MAXPLUS_TEMPLATES(extern, double)
#endif

}  // namespace tropfx
