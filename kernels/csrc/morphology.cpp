// Instantiates the morphology kernels for float and double (torch-free translation unit).
#define TROPFX_INSTANTIATE
#include "morphology.h"

namespace tropfx {
TROPFX_MORPHOLOGY_TEMPLATES(, float)
TROPFX_MORPHOLOGY_TEMPLATES(, double)
}  // namespace tropfx
