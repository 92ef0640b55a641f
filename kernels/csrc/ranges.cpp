// The index range scans (ranges.h), torch-free: a branch-free min / max reduction that the compiler
// vectorizes. And the build's floating-point state, from this translation unit, which has the
// kernels' flags.
#include "ranges.h"

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

namespace tropfx {

namespace {

// Selects on values, not std::min's references: GCC 12 vectorizes this (64-byte vectors with
// AVX-512) and not the std::min form ("control flow in loop"), 7x slower.
template <typename I>
MinMax scan(const I* __restrict p, int64_t n) {
  I lo = p[0], hi = p[0];
  for (int64_t i = 0; i < n; ++i) {
    const I v = p[i];
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  return {lo, hi};
}

}  // namespace

MinMax min_max(const int32_t* p, int64_t n) { return scan(p, n); }
MinMax min_max(const int64_t* p, int64_t n) { return scan(p, n); }

void fp_state(int64_t out[4]) {
#ifdef __FAST_MATH__
  out[0] = 1;
#else
  out[0] = 0;
#endif
#if defined(__FINITE_MATH_ONLY__) && __FINITE_MATH_ONLY__
  out[1] = 1;
#else
  out[1] = 0;
#endif
#if defined(__SSE__) || defined(__x86_64__)
  const unsigned csr = _mm_getcsr();
  out[2] = (csr & 0x8000u) != 0;  // FTZ
  out[3] = (csr & 0x0040u) != 0;  // DAZ
#else
  out[2] = out[3] = 0;
#endif
}

}  // namespace tropfx
