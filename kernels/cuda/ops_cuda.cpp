// CUDA implementations of the tropfx operators (schemas: ../csrc/schemas.h): the contract's meta
// function (../csrc/contract.h, shared with the CPU binding), the index range checks, allocation
// and the launch on the current stream; the kernels are torch-free (kernels.h). float32 only.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "kernels.h"
#include "../csrc/binding_utils.h"

namespace {

using at::Tensor;
using namespace tropfx::binding;  // ceil_div, arg, opt_arg, ptr
namespace ct = tropfx::contract;
namespace tc = tropfx::cuda;
constexpr const ct::Backend& kCUDA = ct::kCUDA;

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "tropfx::", op, " (CUDA): ", cudaGetErrorString(err));
}

void check_cuda(const Tensor& t, const Tensor& like, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), "tropfx::", op, ": ", name, " is on ",
              t.device(), " but the input is on ", like.device(), "; move it with .to(x.device)");
}

// The values of an index tensor against the contract's range, checked here on the host rather
// than by a device-side assert, which would kill the CUDA context: one min / max reduction on the
// device and one copy of two numbers (a synchronization of the current stream).
void check_values(const char* op, const ct::Range& r, const Tensor& t) {
  if (t.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(t);
  const Tensor both = at::stack({lo, hi}).to(at::kLong).cpu();
  const int64_t* p = both.const_data_ptr<int64_t>();
  ct::check_range(op, r, p[0], p[1]);
}

// ---------------------------------------------------------------------------------------------
// Dense max-plus

std::tuple<Tensor, Tensor> maxplus_cuda(const Tensor& x_, const Tensor& weight_,
                                        const std::optional<Tensor>& bias_, bool minplus,
                                        bool with_argmax) {
  const char* op = "maxplus";
  TORCH_CHECK(x_.is_cuda(), "tropfx::maxplus: x is on ", x_.device(), "; these are the CUDA kernels");
  check_cuda(weight_, x_, op, "weight");
  if (bias_.has_value()) check_cuda(*bias_, x_, op, "bias");
  const auto bias_arg = opt_arg(bias_);
  const ct::Dense m = ct::maxplus(kCUDA, arg(x_), arg(weight_), ptr(bias_arg), with_argmax);
  TORCH_CHECK(!with_argmax || m.K <= tc::kMaxplusArgmaxInputs, "tropfx::maxplus: the CUDA kernel "
              "saves argmax for at most ", tc::kMaxplusArgmaxInputs, " in_features, got ", m.K);
  const c10::cuda::CUDAGuard guard(x_.device());
  const Tensor bias = bias_.has_value() ? bias_->contiguous() : Tensor();
  const Tensor x = x_.contiguous(), w = weight_.contiguous();
  Tensor y = at::empty(m.y, x.options());
  Tensor arg = at::empty(m.argmax, x.options().dtype(at::kInt));
  const tc::DenseArgs a{x.const_data_ptr<float>(), w.const_data_ptr<float>(),
                        bias.defined() ? bias.const_data_ptr<float>() : nullptr,
                        y.mutable_data_ptr<float>(),
                        with_argmax ? arg.mutable_data_ptr<int32_t>() : nullptr, m.B, m.K, m.M,
                        minplus};
  check_launch(tc::maxplus_forward(a, stream()), op);
  return {y, arg};
}

std::tuple<Tensor, Tensor, Tensor> maxplus_backward_cuda(const Tensor& grad_, const Tensor& arg_,
                                                         int64_t K, bool has_bias, bool minplus) {
  const char* op = "maxplus_backward";
  TORCH_CHECK(grad_.is_cuda(), "tropfx::", op, ": grad is on ", grad_.device());
  check_cuda(arg_, grad_, op, "argmax");
  const ct::DenseBackward m = ct::maxplus_backward(kCUDA, arg(grad_), arg(arg_), K, has_bias);
  at::globalContext().alertNotDeterministic("tropfx::maxplus_backward (CUDA, atomicAdd)");
  const c10::cuda::CUDAGuard guard(grad_.device());
  const Tensor g = grad_.contiguous(), arg = arg_.contiguous();
  check_values(op, m.argmax, arg);  // the kernel writes grad_x[.., argmax]
  Tensor gx = at::zeros(m.gx, g.options());
  Tensor gw = at::zeros(m.gw, g.options());
  Tensor gb = at::zeros(m.gb, g.options());
  if (m.B == 0 || m.M == 0) return {gx, gw, gb};
  check_launch(tc::maxplus_backward(g.const_data_ptr<float>(), arg.const_data_ptr<int32_t>(),
                                    gx.mutable_data_ptr<float>(), gw.mutable_data_ptr<float>(),
                                    has_bias ? gb.mutable_data_ptr<float>() : nullptr, m.B, m.K,
                                    m.M, minplus, stream()),
               op);
  return {gx, gw, gb};
}

// ---------------------------------------------------------------------------------------------
// Sparse max-plus

std::tuple<Tensor, Tensor> sparse_maxplus_cuda(const Tensor& x_, const Tensor& index_,
                                               const Tensor& value_, const std::optional<Tensor>& bias_,
                                               int64_t dim, bool minplus, bool with_argmax) {
  const char* op = "sparse_maxplus";
  TORCH_CHECK(x_.is_cuda(), "tropfx::", op, ": x is on ", x_.device());
  check_cuda(value_, x_, op, "value");
  check_cuda(index_, x_, op, "index");
  if (bias_.has_value()) check_cuda(*bias_, x_, op, "bias");
  const auto bias_arg = opt_arg(bias_);
  const ct::Sparse m = ct::sparse_maxplus(kCUDA, arg(x_), arg(index_), arg(value_), ptr(bias_arg),
                                          dim, with_argmax);
  const c10::cuda::CUDAGuard guard(x_.device());
  const Tensor bias = bias_.has_value() ? bias_->contiguous() : Tensor();
  const Tensor x = x_.contiguous(), index = index_.contiguous(), value = value_.contiguous();
  check_values(op, m.index, index);  // the kernels read x[.., index, ..]
  Tensor y = at::empty(m.y, x.options());
  Tensor arg = at::empty(m.argmax, x.options().dtype(at::kInt));
  if (y.numel() == 0) return {y, arg};
  const tc::SparseArgs a{x.const_data_ptr<float>(), index.const_data_ptr<int64_t>(),
                         value.const_data_ptr<float>(),
                         bias.defined() ? bias.const_data_ptr<float>() : nullptr,
                         y.mutable_data_ptr<float>(),
                         with_argmax ? arg.mutable_data_ptr<int32_t>() : nullptr,
                         m.outer, m.in, m.inner, m.out, m.k, minplus};
  check_launch(tc::sparse_maxplus_forward(a, stream()), op);
  return {y, arg};
}

std::tuple<Tensor, Tensor, Tensor> sparse_maxplus_backward_cuda(const Tensor& grad_, const Tensor& arg_,
                                                                const Tensor& index_, int64_t in,
                                                                int64_t dim, bool has_bias,
                                                                bool minplus) {
  const char* op = "sparse_maxplus_backward";
  TORCH_CHECK(grad_.is_cuda(), "tropfx::", op, ": grad is on ", grad_.device());
  check_cuda(arg_, grad_, op, "argmax");
  check_cuda(index_, grad_, op, "index");
  const ct::SparseBackward m = ct::sparse_maxplus_backward(kCUDA, arg(grad_), arg(arg_),
                                                           arg(index_), in, dim, has_bias);
  at::globalContext().alertNotDeterministic("tropfx::sparse_maxplus_backward (CUDA, atomicAdd)");
  const c10::cuda::CUDAGuard guard(grad_.device());
  const Tensor g = grad_.contiguous(), arg = arg_.contiguous(), index = index_.contiguous();
  // the kernel reads index[o, argmax] and writes grad_x[.., index[o, argmax], ..]
  check_values(op, m.argmax, arg);
  check_values(op, m.index, index);
  Tensor gx = at::zeros(m.gx, g.options());
  Tensor gv = at::zeros(m.gv, g.options());
  Tensor gb = at::zeros(m.gb, g.options());
  if (g.numel() == 0) return {gx, gv, gb};
  check_launch(tc::sparse_maxplus_backward(g.const_data_ptr<float>(), arg.const_data_ptr<int32_t>(),
                                           index.const_data_ptr<int64_t>(), gx.mutable_data_ptr<float>(),
                                           gv.mutable_data_ptr<float>(),
                                           has_bias ? gb.mutable_data_ptr<float>() : nullptr, m.outer,
                                           m.in, m.inner, m.out, m.k, minplus, stream()),
               op);
  return {gx, gv, gb};
}

// ---------------------------------------------------------------------------------------------
// Morphology

template <typename Meta>
tc::MorphArgs morph_args(const Meta& m, bool erode) {
  const ct::Window& k = m.k;
  return {nullptr, nullptr, nullptr, nullptr, m.N, m.C, m.H, m.W, m.O, m.Ho, m.Wo, int(k.kh),
          int(k.kw), int(k.sh), int(k.sw), int(k.ph), int(k.pw), int(k.dh), int(k.dw), m.full, erode};
}

std::tuple<Tensor, Tensor> morph_cuda(const char* op, const Tensor& x_, const Tensor& w_,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, bool ceil_mode, bool with_argmax,
                                      bool erode) {
  TORCH_CHECK(x_.is_cuda(), "tropfx::", op, ": x is on ", x_.device());
  check_cuda(w_, x_, op, "weight");
  const ct::Morph m = ct::morph(kCUDA, op, arg(x_), arg(w_), stride, padding, dilation, ceil_mode,
                                with_argmax);
  const c10::cuda::CUDAGuard guard(x_.device());
  const Tensor x = x_.contiguous(), w = w_.contiguous();
  Tensor y = at::empty(m.y, x.options());
  Tensor arg = at::empty(m.argmax, x.options().dtype(at::kInt));
  if (y.numel() == 0) return {y, arg};
  auto a = morph_args(m, erode);
  a.x = x.const_data_ptr<float>();
  a.w = w.const_data_ptr<float>();
  a.y = y.mutable_data_ptr<float>();
  a.arg = with_argmax ? arg.mutable_data_ptr<int32_t>() : nullptr;
  check_launch(tc::morph_forward(a, stream()), op);
  return {y, arg};
}

std::tuple<Tensor, Tensor> dilation2d_cuda(const Tensor& x, const Tensor& w, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                           bool ceil_mode, bool with_argmax) {
  return morph_cuda("dilation2d", x, w, stride, padding, dilation, ceil_mode, with_argmax, false);
}

std::tuple<Tensor, Tensor> erosion2d_cuda(const Tensor& x, const Tensor& w, at::IntArrayRef stride,
                                          at::IntArrayRef padding, at::IntArrayRef dilation,
                                          bool ceil_mode, bool with_argmax) {
  return morph_cuda("erosion2d", x, w, stride, padding, dilation, ceil_mode, with_argmax, true);
}

std::tuple<Tensor, Tensor> morph_backward_cuda(const char* op, const Tensor& grad_, const Tensor& arg_,
                                               at::IntArrayRef input_size, at::IntArrayRef weight_size,
                                               at::IntArrayRef stride, at::IntArrayRef padding,
                                               at::IntArrayRef dilation, bool erode) {
  TORCH_CHECK(grad_.is_cuda(), "tropfx::", op, ": grad is on ", grad_.device());
  check_cuda(arg_, grad_, op, "argmax");
  const ct::MorphBackward m = ct::morph_backward(kCUDA, op, arg(grad_), arg(arg_), input_size,
                                                 weight_size, stride, padding, dilation);
  at::globalContext().alertNotDeterministic("tropfx::morphology backward (CUDA, atomicAdd)");
  const c10::cuda::CUDAGuard guard(grad_.device());
  const Tensor g = grad_.contiguous(), arg = arg_.contiguous();
  check_values(op, m.argmax, arg);  // the kernels write grad_weight[.., argmax]
  Tensor gx = at::zeros(m.gx, g.options());
  Tensor gw = at::zeros(m.gw, g.options());
  if (g.numel() == 0) return {gx, gw};
  auto a = morph_args(m, erode);
  a.arg = const_cast<int32_t*>(arg.const_data_ptr<int32_t>());  // read only (MorphArgs is shared)
  check_launch(tc::morph_backward(a, g.const_data_ptr<float>(), gx.mutable_data_ptr<float>(),
                                  gw.mutable_data_ptr<float>(), stream()),
               op);
  return {gx, gw};
}

std::tuple<Tensor, Tensor> dilation2d_backward_cuda(const Tensor& grad, const Tensor& arg,
                                                    at::IntArrayRef input_size, at::IntArrayRef weight_size,
                                                    at::IntArrayRef stride, at::IntArrayRef padding,
                                                    at::IntArrayRef dilation) {
  return morph_backward_cuda("dilation2d_backward", grad, arg, input_size, weight_size, stride,
                             padding, dilation, false);
}

std::tuple<Tensor, Tensor> erosion2d_backward_cuda(const Tensor& grad, const Tensor& arg,
                                                   at::IntArrayRef input_size, at::IntArrayRef weight_size,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation) {
  return morph_backward_cuda("erosion2d_backward", grad, arg, input_size, weight_size, stride,
                             padding, dilation, true);
}

// ---------------------------------------------------------------------------------------------
// Bit-packed boolean operators

// The bit pattern of 1 in dtype t (in its low element-size bytes).
uint64_t one_bits(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return 0x3c00u;
    case at::kBFloat16: return 0x3f80u;
    case at::kFloat: return 0x3f800000u;
    case at::kDouble: return 0x3ff0000000000000ull;
    default: return 1u;
  }
}

Tensor pack_bits_cuda(const Tensor& x_) {
  TORCH_CHECK(x_.is_cuda(), "tropfx::pack_bits: x is on ", x_.device());
  const ct::Sizes shape = ct::pack_bits(arg(x_));
  const c10::cuda::CUDAGuard guard(x_.device());
  const Tensor x = x_.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  Tensor out = at::empty(shape, x.options().dtype(at::kUInt64));
  if (out.numel() == 0) return out;
  check_launch(tc::pack_bits(x.const_data_ptr(), int(x.element_size()),
                             at::isFloatingType(x.scalar_type()), out.mutable_data_ptr<uint64_t>(), N,
                             C, H, W, stream()),
               "pack_bits");
  return out;
}

Tensor unpack_bits_cuda(const Tensor& packed_, int64_t C, std::optional<at::ScalarType> dtype) {
  TORCH_CHECK(packed_.is_cuda(), "tropfx::unpack_bits: packed is on ", packed_.device());
  const ct::Sizes shape = ct::unpack_bits(arg(packed_), C, dtype);
  const at::ScalarType t = dtype.value_or(at::kFloat);
  const c10::cuda::CUDAGuard guard(packed_.device());
  const Tensor packed = packed_.contiguous();
  const int64_t N = packed.size(0), H = packed.size(1), W = packed.size(2);
  Tensor out = at::empty(shape, packed.options().dtype(t));
  if (out.numel() == 0) return out;
  check_launch(tc::unpack_bits(packed.const_data_ptr<uint64_t>(), out.mutable_data_ptr(),
                               int(out.element_size()), one_bits(t), N, C, H, W, stream()),
               "unpack_bits");
  return out;
}

tc::BitGeometry bit_geometry(const ct::Bits& b) {
  const ct::Window& k = b.k;
  return {b.N, b.H, b.W, b.Cw, b.Ho, b.Wo, int(k.kh), int(k.kw), int(k.sh), int(k.sw), int(k.ph),
          int(k.pw), int(k.dh), int(k.dw)};
}

Tensor bool_conv2d_cuda(const Tensor& x_, const Tensor& pos_, const Tensor& neg_,
                        const Tensor& threshold_, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation) {
  const char* op = "bool_conv2d";
  TORCH_CHECK(x_.is_cuda(), "tropfx::", op, ": x is on ", x_.device());
  check_cuda(pos_, x_, op, "weight_pos");
  check_cuda(neg_, x_, op, "weight_neg");
  check_cuda(threshold_, x_, op, "threshold");
  const ct::BoolConv m = ct::bool_conv2d(arg(x_), arg(pos_), arg(neg_), arg(threshold_), stride,
                                         padding, dilation);
  const int64_t O = m.O, Pp = m.Pp, Pn = m.Pn;
  const c10::cuda::CUDAGuard guard(x_.device());
  const Tensor x = x_.contiguous(), pos = pos_.contiguous(), neg = neg_.contiguous();
  const Tensor threshold = threshold_.to(at::kLong).contiguous();
  const auto g = bit_geometry(m.g);
  Tensor out = at::empty(m.g.out, x.options());  // fully written
  if (out.numel() == 0) return out;
  check_launch(tc::bool_conv2d(x.const_data_ptr<uint64_t>(), pos.const_data_ptr<uint64_t>(), int(Pp),
                               neg.const_data_ptr<uint64_t>(), int(Pn),
                               threshold.const_data_ptr<int64_t>(), O, g,
                               out.mutable_data_ptr<uint64_t>(), stream()),
               op);
  return out;
}

Tensor bit_morph_cuda(const char* op, const Tensor& x_, const Tensor& se_, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, bool erode) {
  TORCH_CHECK(x_.is_cuda(), "tropfx::", op, ": x is on ", x_.device());
  check_cuda(se_, x_, op, "se");
  const ct::Bits b = ct::bit_morph(op, arg(x_), arg(se_), stride, padding, dilation);
  const int64_t C = se_.size(0), K = se_.size(1) * se_.size(2), Cw = b.Cw;
  const c10::cuda::CUDAGuard guard(x_.device());
  const Tensor x = x_.contiguous(), se = se_.contiguous();
  const auto g = bit_geometry(b);
  Tensor out = at::empty(b.out, x.options());
  if (out.numel() == 0) return out;
  Tensor masks = at::empty({K * Cw}, x.options());
  check_launch(tc::binary_morph2d(x.const_data_ptr<uint64_t>(),
                                  reinterpret_cast<const uint8_t*>(se.const_data_ptr<bool>()), C, erode,
                                  g, masks.mutable_data_ptr<uint64_t>(),
                                  out.mutable_data_ptr<uint64_t>(), stream()),
               op);
  return out;
}

Tensor binary_dilation2d_cuda(const Tensor& x, const Tensor& se, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  return bit_morph_cuda("binary_dilation2d", x, se, stride, padding, dilation, false);
}

Tensor binary_erosion2d_cuda(const Tensor& x, const Tensor& se, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation) {
  return bit_morph_cuda("binary_erosion2d", x, se, stride, padding, dilation, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(tropfx, CUDA, m) {
  m.impl("maxplus", &maxplus_cuda);
  m.impl("maxplus_backward", &maxplus_backward_cuda);
  m.impl("sparse_maxplus", &sparse_maxplus_cuda);
  m.impl("sparse_maxplus_backward", &sparse_maxplus_backward_cuda);
  m.impl("dilation2d", &dilation2d_cuda);
  m.impl("erosion2d", &erosion2d_cuda);
  m.impl("dilation2d_backward", &dilation2d_backward_cuda);
  m.impl("erosion2d_backward", &erosion2d_backward_cuda);
  m.impl("pack_bits", &pack_bits_cuda);
  m.impl("unpack_bits", &unpack_bits_cuda);
  m.impl("bool_conv2d", &bool_conv2d_cuda);
  m.impl("binary_dilation2d", &binary_dilation2d_cuda);
  m.impl("binary_erosion2d", &binary_erosion2d_cuda);
}
