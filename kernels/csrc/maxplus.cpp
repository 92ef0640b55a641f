// Instantiates the max-plus kernels for float and double (torch-free translation unit).
#define TROPFX_INSTANTIATE
#include "maxplus.h"

namespace tropfx {
TROPFX_MAXPLUS_TEMPLATES(, float)
TROPFX_MAXPLUS_TEMPLATES(, double)
}  // namespace tropfx
