// Argument checks and shape arithmetic shared by the CPU binding (ops.cpp) and the CUDA binding
// (../cuda/ops_cuda.cpp). Unlike the kernels' headers this one needs torch (TORCH_CHECK): only the
// bindings include it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace tropfx::binding {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int64_t wrap_dim(int64_t dim, int64_t n, const char* op) {
  TORCH_CHECK(dim >= -n && dim < n, "tropfx::", op, ": dim ", dim, " is out of range for ", n,
              " dims");
  return dim < 0 ? dim + n : dim;
}

// A 2-D window: kernel, stride, padding, dilation.
struct Window {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

inline Window window_of(const char* op, int64_t kh, int64_t kw, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, "tropfx::", op,
              ": stride, padding and dilation must have 2 entries");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && padding[0] >= 0 && padding[1] >= 0 &&
                  dilation[0] >= 1 && dilation[1] >= 1 && kh >= 1 && kw >= 1,
              "tropfx::", op, ": need kernel, stride, dilation >= 1 and padding >= 0; got stride ",
              stride, ", padding ", padding, ", dilation ", dilation);
  return {kh, kw, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1]};
}

// torch's pooling_output_shape.
inline int64_t pool_out(int64_t size, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  const int64_t span = d * (k - 1) + 1;
  int64_t out = (size + 2 * p - span + (ceil_mode ? s - 1 : 0));
  out = (out >= 0 ? out / s : -((-out + s - 1) / s)) + 1;  // floor division
  if (ceil_mode && (out - 1) * s >= size + p) --out;
  return out;
}

}  // namespace tropfx::binding
