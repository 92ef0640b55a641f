// The scalar semantics every tropfx kernel implements (CPU here, CUDA later): torch.max / torch.min
// along a dim, which is what the pure-torch references (tropfx.nn.functional, tropfx.nn.morphology)
// call. Torch-free; TROPFX_HD marks functions a CUDA kernel can call too.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define TROPFX_HD __host__ __device__ __forceinline__
#else
#define TROPFX_HD inline
#endif

namespace tropfx {

template <typename T>
TROPFX_HD bool is_nan(T v) {
  return v != v;
}

// One step of torch's reduction with index (ATen's compare_base_kernel): a value replaces the
// current extreme when it is strictly better or NaN, so ties keep the FIRST element and the first
// NaN wins. Call it for the elements after the first, in order, while ``!is_nan(best)``: once the
// extreme is NaN the scan stops (ATen breaks there too).
template <bool Min, typename T, typename I>
TROPFX_HD void extreme_step(T v, I q, T& best, I& arg) {
  if (Min ? !(v >= best) : !(v <= best)) {
    best = v;
    arg = q;
  }
}

// A value that can make ``a + c`` NaN for some c in R u {-inf}: NaN itself, or +inf (meeting -inf).
// Rows and planes free of them take the kernels' fast paths, where no NaN can arise and ordered
// comparisons (vmaxps) give torch's result bit for bit.
template <typename T>
TROPFX_HD bool spoils_max(T v) {
  return is_nan(v) || v == T(1) / T(0);
}

// The same for ``a - c`` (erosion): NaN, or -inf (meeting a -inf SE entry: -inf - -inf).
template <typename T>
TROPFX_HD bool spoils_min(T v) {
  return is_nan(v) || v == -T(1) / T(0);
}

}  // namespace tropfx
