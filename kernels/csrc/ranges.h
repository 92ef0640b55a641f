// The min and max of an index array, for the operators' range checks (contract.h, check_range),
// and the floating-point state of the kernels' build. Torch-free; defined in ranges.cpp, compiled
// with the kernels' flags (-O3, so the loop vectorizes; the binding's translation unit is -O1).
#pragma once

#include <cstdint>

namespace tropfx {

struct MinMax {
  int64_t min, max;
};

// n >= 1 entries.
MinMax min_max(const int32_t* p, int64_t n);
MinMax min_max(const int64_t* p, int64_t n);

// What the build did to floating point, read back for tropfx.kernels.build_info(): {__FAST_MATH__
// defined, __FINITE_MATH_ONLY__, the calling thread's MXCSR flush-to-zero bit, its
// denormals-are-zero bit} (the last two 0 off x86).
void fp_state(int64_t out[4]);

}  // namespace tropfx
