// CUDA implementations of the tropfx operators (schemas: ../csrc/ops.cpp): checks, allocation and
// the launch on the current stream; the kernels are torch-free (kernels.h). float32 only.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
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
using namespace tropfx::binding;  // ceil_div, wrap_dim, Window, window_of, pool_out
namespace tc = tropfx::cuda;

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "tropfx::", op, " (CUDA): ", cudaGetErrorString(err));
}

void check_cuda(const Tensor& t, const Tensor& like, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), "tropfx::", op, ": ", name, " is on ",
              t.device(), " but the input is on ", like.device(), "; move it with .to(x.device)");
}

void check_float(const Tensor& t, const Tensor& like, const char* op, const char* name) {
  check_cuda(t, like, op, name);
  TORCH_CHECK(t.scalar_type() == at::kFloat, "tropfx::", op, ": ", name, " is ", t.scalar_type(),
              "; the CUDA kernels support float32 only (float16, bfloat16 and float64 are not "
              "implemented): convert with .float(), or use the reference in tropfx.nn.functional "
              "/ tropfx.nn.morphology");
}

void check_int32(const Tensor& t, const Tensor& like, const char* op) {
  check_cuda(t, like, op, "argmax");
  TORCH_CHECK(t.scalar_type() == at::kInt, "tropfx::", op,
              ": argmax must be the int32 tensor the forward returned, got ", t.scalar_type());
}

void check_bits(const Tensor& t, const Tensor& like, const char* op, const char* name, int64_t dim) {
  check_cuda(t, like, op, name);
  TORCH_CHECK(t.scalar_type() == at::kUInt64 && t.dim() == dim, "tropfx::", op, ": ", name,
              " must be a ", dim, "-D uint64 tensor of packed bits (tropfx::pack_bits), got ",
              t.scalar_type(), " of ", t.dim(), " dims");
}

// ---------------------------------------------------------------------------------------------
// Dense max-plus

std::tuple<Tensor, Tensor> maxplus_cuda(const Tensor& x_, const Tensor& weight_,
                                        const std::optional<Tensor>& bias_, bool minplus,
                                        bool with_argmax) {
  const char* op = "maxplus";
  TORCH_CHECK(x_.is_cuda(), "tropfx::maxplus: x is on ", x_.device(), "; these are the CUDA kernels");
  check_float(x_, x_, op, "x");
  check_float(weight_, x_, op, "weight");
  TORCH_CHECK(x_.dim() >= 1 && weight_.dim() == 2 && x_.size(-1) == weight_.size(1),
              "tropfx::maxplus: x (..., in) must fit weight (out, in); got x ", x_.sizes(),
              " and weight ", weight_.sizes());
  const int64_t K = weight_.size(1), M = weight_.size(0);
  TORCH_CHECK(K > 0, "tropfx::maxplus: in_features is 0; a max over no input is undefined");
  TORCH_CHECK(!with_argmax || K <= tc::kMaxplusArgmaxInputs, "tropfx::maxplus: the CUDA kernel "
              "saves argmax for at most ", tc::kMaxplusArgmaxInputs, " in_features, got ", K);
  Tensor bias;
  if (bias_.has_value()) {
    bias = bias_->contiguous();
    check_float(bias, x_, op, "bias");
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == M, "tropfx::maxplus: bias must be (", M,
                "), got ", bias.sizes());
  }
  const c10::cuda::CUDAGuard guard(x_.device());
  const Tensor x = x_.contiguous(), w = weight_.contiguous();
  const int64_t B = x.numel() / K;
  auto shape = x.sizes().vec();
  shape.back() = M;
  Tensor y = at::empty(shape, x.options());
  Tensor arg = at::empty(with_argmax ? shape : std::vector<int64_t>{0}, x.options().dtype(at::kInt));
  const tc::DenseArgs a{x.const_data_ptr<float>(), w.const_data_ptr<float>(),
                        bias.defined() ? bias.const_data_ptr<float>() : nullptr,
                        y.mutable_data_ptr<float>(),
                        with_argmax ? arg.mutable_data_ptr<int32_t>() : nullptr, B, K, M, minplus};
  check_launch(tc::maxplus_forward(a, stream()), op);
  return {y, arg};
}

std::tuple<Tensor, Tensor, Tensor> maxplus_backward_cuda(const Tensor& grad_, const Tensor& arg_,
                                                         int64_t K, bool has_bias, bool minplus) {
  const char* op = "maxplus_backward";
  TORCH_CHECK(grad_.is_cuda(), "tropfx::", op, ": grad is on ", grad_.device());
  check_float(grad_, grad_, op, "grad");
  check_int32(arg_, grad_, op);
  TORCH_CHECK(grad_.dim() >= 1 && grad_.sizes() == arg_.sizes(), "tropfx::maxplus_backward: grad ",
              grad_.sizes(), " and argmax ", arg_.sizes(),
              " differ; was the forward run with with_argmax=True?");
  at::globalContext().alertNotDeterministic("tropfx::maxplus_backward (CUDA, atomicAdd)");
  const c10::cuda::CUDAGuard guard(grad_.device());
  const Tensor g = grad_.contiguous(), arg = arg_.contiguous();
  const int64_t M = g.size(-1), B = g.numel() / std::max<int64_t>(M, 1);
  auto shape = g.sizes().vec();
  shape.back() = K;
  Tensor gx = at::zeros(shape, g.options());
  Tensor gw = at::zeros({M, K}, g.options());
  Tensor gb = at::zeros({has_bias ? M : 0}, g.options());
  if (B == 0 || M == 0) return {gx, gw, gb};
  check_launch(tc::maxplus_backward(g.const_data_ptr<float>(), arg.const_data_ptr<int32_t>(),
                                    gx.mutable_data_ptr<float>(), gw.mutable_data_ptr<float>(),
                                    has_bias ? gb.mutable_data_ptr<float>() : nullptr, B, K, M,
                                    minplus, stream()),
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
  check_float(x_, x_, op, "x");
  check_float(value_, x_, op, "value");
  check_cuda(index_, x_, op, "index");
  TORCH_CHECK(x_.dim() >= 1, "tropfx::sparse_maxplus: x must have a feature dim");
  dim = wrap_dim(dim, x_.dim(), op);
  TORCH_CHECK(index_.scalar_type() == at::kLong && index_.dim() == 2 && value_.sizes() == index_.sizes()
                  && index_.size(1) >= 1,
              "tropfx::sparse_maxplus: index must be int64 (out, k >= 1) and value of the same shape; "
              "got index ", index_.scalar_type(), " ", index_.sizes(), " and value ", value_.sizes());
  const int64_t out = index_.size(0), k = index_.size(1), in = x_.size(dim);
  // Index values are checked on the device (a failed check is a device-side assert).
  TORCH_CHECK(in > 0 || out == 0, "tropfx::sparse_maxplus: x has no inputs along dim ", dim,
              " for ", out, " outputs to read");
  Tensor bias;
  if (bias_.has_value()) {
    bias = bias_->contiguous();
    check_float(bias, x_, op, "bias");
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == out, "tropfx::sparse_maxplus: bias must be (",
                out, "), got ", bias.sizes());
  }
  const c10::cuda::CUDAGuard guard(x_.device());
  const Tensor x = x_.contiguous(), index = index_.contiguous(), value = value_.contiguous();
  auto shape = x.sizes().vec();
  shape[dim] = out;
  Tensor y = at::empty(shape, x.options());
  Tensor arg = at::empty(with_argmax ? shape : std::vector<int64_t>{0}, x.options().dtype(at::kInt));
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= x.size(d);
  for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= x.size(d);
  if (y.numel() == 0) return {y, arg};
  const tc::SparseArgs a{x.const_data_ptr<float>(), index.const_data_ptr<int64_t>(),
                         value.const_data_ptr<float>(),
                         bias.defined() ? bias.const_data_ptr<float>() : nullptr,
                         y.mutable_data_ptr<float>(),
                         with_argmax ? arg.mutable_data_ptr<int32_t>() : nullptr,
                         outer, in, inner, out, k, minplus};
  check_launch(tc::sparse_maxplus_forward(a, stream()), op);
  return {y, arg};
}

std::tuple<Tensor, Tensor, Tensor> sparse_maxplus_backward_cuda(const Tensor& grad_, const Tensor& arg_,
                                                                const Tensor& index_, int64_t in,
                                                                int64_t dim, bool has_bias,
                                                                bool minplus) {
  const char* op = "sparse_maxplus_backward";
  TORCH_CHECK(grad_.is_cuda(), "tropfx::", op, ": grad is on ", grad_.device());
  check_float(grad_, grad_, op, "grad");
  check_int32(arg_, grad_, op);
  check_cuda(index_, grad_, op, "index");
  TORCH_CHECK(grad_.sizes() == arg_.sizes(), "tropfx::sparse_maxplus_backward: grad ", grad_.sizes(),
              " and argmax ", arg_.sizes(), " differ; was the forward run with with_argmax=True?");
  TORCH_CHECK(index_.scalar_type() == at::kLong && index_.dim() == 2,
              "tropfx::sparse_maxplus_backward: index must be int64 (out, k)");
  dim = wrap_dim(dim, grad_.dim(), op);
  at::globalContext().alertNotDeterministic("tropfx::sparse_maxplus_backward (CUDA, atomicAdd)");
  const c10::cuda::CUDAGuard guard(grad_.device());
  const Tensor g = grad_.contiguous(), arg = arg_.contiguous(), index = index_.contiguous();
  const int64_t out = index.size(0), k = index.size(1);
  TORCH_CHECK(g.size(dim) == out, "tropfx::sparse_maxplus_backward: grad has ", g.size(dim),
              " outputs along dim ", dim, ", index ", out);
  auto shape = g.sizes().vec();
  shape[dim] = in;
  Tensor gx = at::zeros(shape, g.options());
  Tensor gv = at::zeros({out, k}, g.options());
  Tensor gb = at::zeros({has_bias ? out : 0}, g.options());
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= g.size(d);
  for (int64_t d = dim + 1; d < g.dim(); ++d) inner *= g.size(d);
  if (g.numel() == 0) return {gx, gv, gb};
  check_launch(tc::sparse_maxplus_backward(g.const_data_ptr<float>(), arg.const_data_ptr<int32_t>(),
                                           index.const_data_ptr<int64_t>(), gx.mutable_data_ptr<float>(),
                                           gv.mutable_data_ptr<float>(),
                                           has_bias ? gb.mutable_data_ptr<float>() : nullptr, outer,
                                           in, inner, out, k, minplus, stream()),
               op);
  return {gx, gv, gb};
}

// ---------------------------------------------------------------------------------------------
// Morphology

tc::MorphArgs morph_args(const Window& k, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O,
                         int64_t Ho, int64_t Wo, bool full, bool erode) {
  return {nullptr, nullptr, nullptr, nullptr, N, C, H, W, O, Ho, Wo, int(k.kh), int(k.kw), int(k.sh),
          int(k.sw), int(k.ph), int(k.pw), int(k.dh), int(k.dw), full, erode};
}

std::tuple<Tensor, Tensor> morph_cuda(const char* op, const Tensor& x_, const Tensor& w_,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, bool ceil_mode, bool with_argmax,
                                      bool erode) {
  TORCH_CHECK(x_.is_cuda(), "tropfx::", op, ": x is on ", x_.device());
  check_float(x_, x_, op, "x");
  check_float(w_, x_, op, "weight");
  TORCH_CHECK(x_.dim() == 4, "tropfx::", op, ": x must be (N, C, H, W), got ", x_.sizes());
  TORCH_CHECK(w_.dim() == 3 || w_.dim() == 4, "tropfx::", op,
              ": weight must be (C, kh, kw) or (O, C, kh, kw), got ", w_.sizes());
  const bool full = w_.dim() == 4;
  TORCH_CHECK(w_.size(full ? 1 : 0) == x_.size(1), "tropfx::", op, ": x has ", x_.size(1),
              " channels but weight is ", w_.sizes());
  const Window k = window_of(op, w_.size(-2), w_.size(-1), stride, padding, dilation);
  const int64_t Ho = pool_out(x_.size(2), k.kh, k.sh, k.ph, k.dh, ceil_mode);
  const int64_t Wo = pool_out(x_.size(3), k.kw, k.sw, k.pw, k.dw, ceil_mode);
  TORCH_CHECK(Ho >= 1 && Wo >= 1, "tropfx::", op, ": the kernel ", w_.sizes().slice(w_.dim() - 2),
              " (dilation ", dilation, ") is larger than the padded input ", x_.sizes().slice(2));
  TORCH_CHECK(w_.numel() > 0, "tropfx::", op, ": weight is empty");
  TORCH_CHECK(x_.size(1) * k.kh * k.kw <= INT32_MAX, "tropfx::", op,
              ": window positions must fit int32 (argmax)");
  const c10::cuda::CUDAGuard guard(x_.device());
  const int64_t O = full ? w_.size(0) : x_.size(1);
  const Tensor x = x_.contiguous(), w = w_.contiguous();
  const std::vector<int64_t> shape{x.size(0), O, Ho, Wo};
  Tensor y = at::empty(shape, x.options());
  Tensor arg = at::empty(with_argmax ? shape : std::vector<int64_t>{0}, x.options().dtype(at::kInt));
  if (y.numel() == 0) return {y, arg};
  auto a = morph_args(k, x.size(0), x.size(1), x.size(2), x.size(3), O, Ho, Wo, full, erode);
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
  check_float(grad_, grad_, op, "grad");
  check_int32(arg_, grad_, op);
  TORCH_CHECK(grad_.dim() == 4 && grad_.sizes() == arg_.sizes(), "tropfx::", op, ": grad ",
              grad_.sizes(), " and argmax ", arg_.sizes(),
              " must be the same (N, O, Ho, Wo); was the forward run with with_argmax=True?");
  TORCH_CHECK(input_size.size() == 4 && (weight_size.size() == 3 || weight_size.size() == 4),
              "tropfx::", op, ": input_size must be (N, C, H, W) and weight_size (C, kh, kw) or "
              "(O, C, kh, kw)");
  const bool full = weight_size.size() == 4;
  const Window k = window_of(op, weight_size[weight_size.size() - 2], weight_size.back(), stride,
                             padding, dilation);
  at::globalContext().alertNotDeterministic("tropfx::morphology backward (CUDA, atomicAdd)");
  const c10::cuda::CUDAGuard guard(grad_.device());
  const Tensor g = grad_.contiguous(), arg = arg_.contiguous();
  Tensor gx = at::zeros(input_size, g.options());
  Tensor gw = at::zeros(weight_size, g.options());
  const int64_t O = g.size(1), Ho = g.size(2), Wo = g.size(3);
  TORCH_CHECK(O == (full ? weight_size[0] : input_size[1]) && g.size(0) == input_size[0], "tropfx::",
              op, ": grad ", g.sizes(), " does not fit input ", input_size, " and weight ", weight_size);
  if (g.numel() == 0) return {gx, gw};
  auto a = morph_args(k, input_size[0], input_size[1], input_size[2], input_size[3], O, Ho, Wo, full,
                      erode);
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

// The dtypes the CPU kernels take (AT_DISPATCH_ALL_TYPES_AND3(Bool, Half, BFloat16)).
bool bit_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBool: case at::kByte: case at::kChar: case at::kShort: case at::kInt: case at::kLong:
    case at::kHalf: case at::kBFloat16: case at::kFloat: case at::kDouble:
      return true;
    default:
      return false;
  }
}

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
  TORCH_CHECK(x_.is_cuda() && x_.dim() == 4, "tropfx::pack_bits: x must be a (N, C, H, W) CUDA "
              "tensor, got ", x_.sizes(), " on ", x_.device());
  TORCH_CHECK(bit_dtype(x_.scalar_type()), "tropfx::pack_bits: unsupported dtype ", x_.scalar_type());
  const c10::cuda::CUDAGuard guard(x_.device());
  const Tensor x = x_.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  Tensor out = at::empty({N, H, W, ceil_div(C, 64)}, x.options().dtype(at::kUInt64));
  if (out.numel() == 0) return out;
  check_launch(tc::pack_bits(x.const_data_ptr(), int(x.element_size()),
                             at::isFloatingType(x.scalar_type()), out.mutable_data_ptr<uint64_t>(), N,
                             C, H, W, stream()),
               "pack_bits");
  return out;
}

Tensor unpack_bits_cuda(const Tensor& packed_, int64_t C, std::optional<at::ScalarType> dtype) {
  check_bits(packed_, packed_, "unpack_bits", "packed", 4);
  const at::ScalarType t = dtype.value_or(at::kFloat);
  TORCH_CHECK(bit_dtype(t), "tropfx::unpack_bits: unsupported dtype ", t);
  const c10::cuda::CUDAGuard guard(packed_.device());
  const Tensor packed = packed_.contiguous();
  const int64_t N = packed.size(0), H = packed.size(1), W = packed.size(2), Cw = packed.size(3);
  TORCH_CHECK(C >= 0 && ceil_div(C, 64) == Cw, "tropfx::unpack_bits: ", C, " channels do not fit ",
              Cw, " words per pixel");
  Tensor out = at::empty({N, C, H, W}, packed.options().dtype(t));
  if (out.numel() == 0) return out;
  check_launch(tc::unpack_bits(packed.const_data_ptr<uint64_t>(), out.mutable_data_ptr(),
                               int(out.element_size()), one_bits(t), N, C, H, W, stream()),
               "unpack_bits");
  return out;
}

tc::BitGeometry bit_geometry(const char* op, const Tensor& x, int64_t kh, int64_t kw,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation) {
  const Window k = window_of(op, kh, kw, stride, padding, dilation);
  tc::BitGeometry g{x.size(0), x.size(1), x.size(2), x.size(3), 0, 0, int(k.kh), int(k.kw),
                    int(k.sh), int(k.sw), int(k.ph), int(k.pw), int(k.dh), int(k.dw)};
  TORCH_CHECK(g.H + 2 * k.ph >= k.dh * (k.kh - 1) + 1 && g.W + 2 * k.pw >= k.dw * (k.kw - 1) + 1,
              "tropfx::", op, ": the kernel is larger than the padded input");
  g.Ho = (g.H + 2 * k.ph - k.dh * (k.kh - 1) - 1) / k.sh + 1;
  g.Wo = (g.W + 2 * k.pw - k.dw * (k.kw - 1) - 1) / k.sw + 1;
  return g;
}

Tensor bool_conv2d_cuda(const Tensor& x_, const Tensor& pos_, const Tensor& neg_,
                        const Tensor& threshold_, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation) {
  const char* op = "bool_conv2d";
  TORCH_CHECK(x_.is_cuda(), "tropfx::", op, ": x is on ", x_.device());
  check_bits(x_, x_, op, "x", 4);
  check_bits(pos_, x_, op, "weight_pos", 5);
  check_bits(neg_, x_, op, "weight_neg", 5);
  check_cuda(threshold_, x_, op, "threshold");
  const int64_t O = pos_.size(0), kh = pos_.size(1), kw = pos_.size(2), Pp = pos_.size(3);
  const int64_t Pn = neg_.size(3), Cw = x_.size(3);
  TORCH_CHECK(pos_.size(4) == Cw && neg_.size(0) == O && neg_.size(1) == kh && neg_.size(2) == kw &&
                  neg_.size(4) == Cw,
              "tropfx::bool_conv2d: weight planes ", pos_.sizes(), " and ", neg_.sizes(),
              " must be (O, kh, kw, planes, Cw) with the Cw = ", Cw, " of x");
  TORCH_CHECK(Pp + Pn <= 62, "tropfx::bool_conv2d: too many weight planes");
  TORCH_CHECK(!at::isFloatingType(threshold_.scalar_type()) && threshold_.dim() == 1 &&
                  threshold_.size(0) == O,
              "tropfx::bool_conv2d: threshold must be an integer tensor (", O, "), got ",
              threshold_.scalar_type(), " ", threshold_.sizes());
  const c10::cuda::CUDAGuard guard(x_.device());
  const Tensor x = x_.contiguous(), pos = pos_.contiguous(), neg = neg_.contiguous();
  const Tensor threshold = threshold_.to(at::kLong).contiguous();
  const auto g = bit_geometry(op, x, kh, kw, stride, padding, dilation);
  Tensor out = at::empty({g.N, g.Ho, g.Wo, ceil_div(O, 64)}, x.options());  // fully written
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
  check_bits(x_, x_, op, "x", 4);
  check_cuda(se_, x_, op, "se");
  TORCH_CHECK(se_.scalar_type() == at::kBool && se_.dim() == 3, "tropfx::", op,
              ": se must be a bool (C, kh, kw) tensor, got ", se_.scalar_type(), " ", se_.sizes());
  const int64_t C = se_.size(0), K = se_.size(1) * se_.size(2), Cw = x_.size(3);
  TORCH_CHECK(ceil_div(C, 64) == Cw, "tropfx::", op, ": se has ", C, " channels, x ", Cw,
              " words per pixel");
  const c10::cuda::CUDAGuard guard(x_.device());
  const Tensor x = x_.contiguous(), se = se_.contiguous();
  const auto g = bit_geometry(op, x, se.size(1), se.size(2), stride, padding, dilation);
  Tensor out = at::empty({g.N, g.Ho, g.Wo, Cw}, x.options());
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
