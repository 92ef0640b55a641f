// The index range scans (ranges.h), torch-free: branch-free min / max that the compiler vectorizes,
// four independent accumulators so the loop is not bound by one dependency chain. And the build's
// floating-point state, from this translation unit, which has the kernels' flags.
#include "ranges.h"

#include <algorithm>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

namespace tropfx {

namespace {

template <typename I>
MinMax scan(const I* p, int64_t n) {
  I lo[4] = {p[0], p[0], p[0], p[0]}, hi[4] = {p[0], p[0], p[0], p[0]};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int l = 0; l < 4; ++l) {
      lo[l] = std::min(lo[l], p[i + l]);
      hi[l] = std::max(hi[l], p[i + l]);
    }
  for (; i < n; ++i) {
    lo[0] = std::min(lo[0], p[i]);
    hi[0] = std::max(hi[0], p[i]);
  }
  return {std::min({lo[0], lo[1], lo[2], lo[3]}), std::max({hi[0], hi[1], hi[2], hi[3]})};
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
