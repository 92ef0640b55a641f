// The min and max of an index array, for the operators' range checks (contract.h, check_range).
// Torch-free; defined in ranges.cpp, compiled with -O3 so the loop vectorizes (the binding's
// translation unit is built at -O1).
#pragma once

#include <cstdint>

namespace tropfx {

struct MinMax {
  int64_t min, max;
};

// n >= 1 entries.
MinMax min_max(const int32_t* p, int64_t n);
MinMax min_max(const int64_t* p, int64_t n);

}  // namespace tropfx
