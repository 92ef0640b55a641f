// The operators' contract, written once: one meta function per operator that checks its arguments
// (shapes, dtypes, sizes, dims, windows) and returns its output sizes and the quantities its kernels
// need. Called by the CPU binding (ops.cpp), the CUDA binding (../cuda/ops_cuda.cpp) and the debug
// namespace tropfx_contract (ops.cpp, for the parity test with the Python fakes in ops.py).
//
// Torch-free-ish: c10 only (sizes, dtypes, TORCH_CHECK), no Tensor, so a meta function sees the
// same thing whatever the device. What differs between backends (CUDA: float32 only) is a Backend
// argument; device placement is the bindings' business. The index *values* (argmax, sparse index)
// are data: the bindings check them against the ranges returned here (check_range), with a min /
// max pass on their device.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

namespace tropfx::contract {

using c10::IntArrayRef;
using Sizes = std::vector<int64_t>;

// The int32 index math of the kernels (argmax, window offsets, CUDA launch arithmetic).
constexpr int64_t kInt32Limit = int64_t(1) << 31;

// What a backend implements.
struct Backend {
  const char* name;  // "CPU", "CUDA"
  bool float64;      // float64 kernels exist
};
inline constexpr Backend kCPU{"CPU", true};
inline constexpr Backend kCUDA{"CUDA", false};

// A tensor argument as the contract sees it.
struct Arg {
  IntArrayRef sizes;
  c10::ScalarType dtype;
  int64_t dim() const { return int64_t(sizes.size()); }
  int64_t size(int64_t d) const { return sizes[d < 0 ? d + dim() : d]; }
  int64_t numel() const {
    int64_t n = 1;
    for (const int64_t s : sizes) n *= s;
    return n;
  }
};

// The allowed values [lo, hi) of an index tensor the bindings check (name: "argmax", "index").
struct Range {
  const char* name;
  int64_t lo, hi;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int64_t wrap_dim(const char* op, int64_t dim, int64_t n) {
  TORCH_CHECK_INDEX(dim >= -n && dim < n, "tropfx::", op, ": dim ", dim, " is out of range for ",
                    n, " dims");
  return dim < 0 ? dim + n : dim;
}

// min and max of an index tensor (the binding's pass over its data) against the allowed range:
// an IndexError naming the operator, the argument and the bad value.
inline void check_range(const char* op, const Range& r, int64_t min, int64_t max) {
  TORCH_CHECK_INDEX(min >= r.lo, "tropfx::", op, ": ", r.name, " holds ", min, ", outside [", r.lo,
                    ", ", r.hi, ")");
  TORCH_CHECK_INDEX(max < r.hi, "tropfx::", op, ": ", r.name, " holds ", max, ", outside [", r.lo,
                    ", ", r.hi, ")");
}

inline void check_float(const Backend& b, const char* op, const char* name, c10::ScalarType t) {
  const bool ok = t == c10::kFloat || (b.float64 && t == c10::kDouble);
  TORCH_CHECK(ok, "tropfx::", op, ": ", name, " is ", t, "; the ", b.name, " kernels support ",
              b.float64 ? "float32 and float64" : "float32 only (float16, bfloat16 and float64 "
              "are not implemented)",
              ": convert with .float(), or use the reference in tropfx.nn.functional / "
              "tropfx.nn.morphology");
}

inline void check_like(const char* op, const char* name, const Arg& a, c10::ScalarType x) {
  TORCH_CHECK(a.dtype == x, "tropfx::", op, ": ", name, " is ", a.dtype, " but x is ", x,
              "; convert one of them");
}

inline void check_argmax(const char* op, const Arg& grad, const Arg& argmax) {
  TORCH_CHECK(argmax.dtype == c10::kInt, "tropfx::", op,
              ": argmax must be the int32 tensor the forward returned, got ", argmax.dtype);
  TORCH_CHECK(grad.sizes == argmax.sizes, "tropfx::", op, ": grad ", grad.sizes, " and argmax ",
              argmax.sizes, " differ; was the forward run with with_argmax=True?");
}

// A size argument of a backward (in_features, input_size, ...): what the forward could have had.
inline void check_size(const char* op, const char* name, int64_t v, int64_t lo, int64_t hi) {
  TORCH_CHECK(v >= lo && v < hi, "tropfx::", op, ": ", name, " is ", v, ", outside [", lo, ", ",
              hi, ")");
}

inline Sizes with(IntArrayRef sizes, int64_t dim, int64_t value) {
  Sizes s = sizes.vec();
  s[dim] = value;
  return s;
}

// --- dense max-plus ---------------------------------------------------------------------------

struct Dense {
  Sizes y, argmax;
  int64_t B, K, M;
};

inline Dense maxplus(const Backend& b, const Arg& x, const Arg& weight, const Arg* bias,
                     bool with_argmax) {
  const char* op = "maxplus";
  check_float(b, op, "x", x.dtype);
  check_like(op, "weight", weight, x.dtype);
  TORCH_CHECK(x.dim() >= 1 && weight.dim() == 2 && x.size(-1) == weight.size(1),
              "tropfx::maxplus: x (..., in) must fit weight (out, in); got x ", x.sizes,
              " and weight ", weight.sizes);
  const int64_t K = weight.size(1), M = weight.size(0);
  TORCH_CHECK(K > 0, "tropfx::maxplus: in_features is 0; a max over no input is undefined");
  TORCH_CHECK(K < kInt32Limit, "tropfx::maxplus: in_features must fit the int32 argmax, got ", K);
  if (bias != nullptr) {
    check_like(op, "bias", *bias, x.dtype);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == M, "tropfx::maxplus: bias must be (", M,
                "), got ", bias->sizes);
  }
  Sizes y = with(x.sizes, x.dim() - 1, M);
  return {y, with_argmax ? y : Sizes{0}, x.numel() / K, K, M};
}

struct DenseBackward {
  Sizes gx, gw, gb;
  int64_t B, K, M;
  Range argmax;
};

inline DenseBackward maxplus_backward(const Backend& b, const Arg& grad, const Arg& argmax,
                                      int64_t K, bool has_bias) {
  const char* op = "maxplus_backward";
  check_float(b, op, "grad", grad.dtype);
  check_argmax(op, grad, argmax);
  TORCH_CHECK(grad.dim() >= 1, "tropfx::maxplus_backward: grad must have an output dim");
  check_size(op, "in_features", K, 1, kInt32Limit);
  const int64_t M = grad.size(-1), B = M == 0 ? 0 : grad.numel() / M;
  return {with(grad.sizes, grad.dim() - 1, K), {M, K}, {has_bias ? M : 0}, B, K, M,
          {"argmax", -1, K}};
}

// --- sparse max-plus --------------------------------------------------------------------------

struct Sparse {
  Sizes y, argmax;
  int64_t dim, outer, in, inner, out, k;
  Range index;
};

inline void outer_inner(IntArrayRef sizes, int64_t dim, int64_t& outer, int64_t& inner) {
  outer = inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= sizes[d];
  for (int64_t d = dim + 1; d < int64_t(sizes.size()); ++d) inner *= sizes[d];
}

inline Sparse sparse_maxplus(const Backend& b, const Arg& x, const Arg& index, const Arg& value,
                             const Arg* bias, int64_t dim, bool with_argmax) {
  const char* op = "sparse_maxplus";
  check_float(b, op, "x", x.dtype);
  check_like(op, "value", value, x.dtype);
  TORCH_CHECK(x.dim() >= 1, "tropfx::sparse_maxplus: x must have a feature dim");
  dim = wrap_dim(op, dim, x.dim());
  TORCH_CHECK(index.dtype == c10::kLong && index.dim() == 2 && value.sizes == index.sizes &&
                  index.size(1) >= 1,
              "tropfx::sparse_maxplus: index must be int64 (out, k >= 1) and value of the same "
              "shape; got index ", index.dtype, " ", index.sizes, " and value ", value.sizes);
  const int64_t out = index.size(0), k = index.size(1), in = x.size(dim);
  TORCH_CHECK(in < kInt32Limit && k < kInt32Limit,
              "tropfx::sparse_maxplus: sizes past 2^31 are not supported");
  if (bias != nullptr) {
    check_like(op, "bias", *bias, x.dtype);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out, "tropfx::sparse_maxplus: bias must be (",
                out, "), got ", bias->sizes);
  }
  Sparse s{with(x.sizes, dim, out), {}, dim, 1, in, 1, out, k, {"index", 0, in}};
  s.argmax = with_argmax ? s.y : Sizes{0};
  outer_inner(x.sizes, dim, s.outer, s.inner);
  return s;
}

struct SparseBackward {
  Sizes gx, gv, gb;
  int64_t dim, outer, in, inner, out, k;
  Range argmax, index;
};

inline SparseBackward sparse_maxplus_backward(const Backend& b, const Arg& grad, const Arg& argmax,
                                              const Arg& index, int64_t in, int64_t dim,
                                              bool has_bias) {
  const char* op = "sparse_maxplus_backward";
  check_float(b, op, "grad", grad.dtype);
  check_argmax(op, grad, argmax);
  TORCH_CHECK(grad.dim() >= 1, "tropfx::sparse_maxplus_backward: grad must have a feature dim");
  TORCH_CHECK(index.dtype == c10::kLong && index.dim() == 2 && index.size(1) >= 1,
              "tropfx::sparse_maxplus_backward: index must be int64 (out, k >= 1), got ",
              index.dtype, " ", index.sizes);
  dim = wrap_dim(op, dim, grad.dim());
  const int64_t out = index.size(0), k = index.size(1);
  TORCH_CHECK(grad.size(dim) == out, "tropfx::sparse_maxplus_backward: grad has ", grad.size(dim),
              " outputs along dim ", dim, ", index ", out);
  check_size(op, "in_features", in, 0, kInt32Limit);
  TORCH_CHECK(k < kInt32Limit, "tropfx::sparse_maxplus_backward: k past 2^31 is not supported");
  SparseBackward s{with(grad.sizes, dim, in), {out, k}, {has_bias ? out : 0}, dim, 1, in, 1, out, k,
                   {"argmax", -1, k}, {"index", 0, in}};
  outer_inner(grad.sizes, dim, s.outer, s.inner);
  return s;
}

// --- morphology -------------------------------------------------------------------------------

// A 2-D window: kernel, stride, padding, dilation.
struct Window {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// The window of an (H, W) input; every extent the kernels compute (padded input, window span)
// fits int32.
inline Window window(const char* op, int64_t H, int64_t W, int64_t kh, int64_t kw,
                     IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation) {
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, "tropfx::", op,
              ": stride, padding and dilation must have 2 entries");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && padding[0] >= 0 && padding[1] >= 0 &&
                  dilation[0] >= 1 && dilation[1] >= 1 && kh >= 1 && kw >= 1,
              "tropfx::", op, ": need kernel, stride, dilation >= 1 and padding >= 0; got kernel (",
              kh, ", ", kw, "), stride ", stride, ", padding ", padding, ", dilation ", dilation);
  const int64_t big = kInt32Limit;
  const bool fits = H < big && W < big && stride[0] < big && stride[1] < big && kh < big &&
                    kw < big && padding[0] < big / 4 && padding[1] < big / 4 &&
                    dilation[0] < big && dilation[1] < big &&
                    dilation[0] * (kh - 1) < big && dilation[1] * (kw - 1) < big &&
                    H + 2 * padding[0] < big && W + 2 * padding[1] < big;
  TORCH_CHECK(fits, "tropfx::", op, ": the window must fit int32 index math: input (", H, ", ", W,
              "), kernel (", kh, ", ", kw, "), stride ", stride, ", padding ", padding,
              ", dilation ", dilation);
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

struct Morph {
  Sizes y, argmax;
  Window k;
  int64_t N, C, H, W, O, Ho, Wo;
  bool full;
};

inline Morph morph(const Backend& b, const char* op, const Arg& x, const Arg& w, IntArrayRef stride,
                   IntArrayRef padding, IntArrayRef dilation, bool ceil_mode, bool with_argmax) {
  check_float(b, op, "x", x.dtype);
  check_like(op, "weight", w, x.dtype);
  TORCH_CHECK(x.dim() == 4, "tropfx::", op, ": x must be (N, C, H, W), got ", x.sizes);
  TORCH_CHECK(w.dim() == 3 || w.dim() == 4, "tropfx::", op,
              ": weight must be (C, kh, kw) or (O, C, kh, kw), got ", w.sizes);
  const bool full = w.dim() == 4;
  TORCH_CHECK(w.size(full ? 1 : 0) == x.size(1), "tropfx::", op, ": x has ", x.size(1),
              " channels but weight is ", w.sizes);
  const Window k = window(op, x.size(2), x.size(3), w.size(-2), w.size(-1), stride, padding,
                          dilation);
  const int64_t Ho = pool_out(x.size(2), k.kh, k.sh, k.ph, k.dh, ceil_mode);
  const int64_t Wo = pool_out(x.size(3), k.kw, k.sw, k.pw, k.dw, ceil_mode);
  TORCH_CHECK(Ho >= 1 && Wo >= 1, "tropfx::", op, ": the kernel ", w.sizes.slice(w.dim() - 2),
              " (dilation ", dilation, ") is larger than the padded input ", x.sizes.slice(2));
  TORCH_CHECK(w.numel() > 0, "tropfx::", op, ": weight is empty");
  TORCH_CHECK(x.size(1) * k.kh * k.kw < kInt32Limit, "tropfx::", op,
              ": the window must fit the int32 argmax");
  const int64_t O = full ? w.size(0) : x.size(1);
  Sizes y{x.size(0), O, Ho, Wo};
  return {y, with_argmax ? y : Sizes{0}, k, x.size(0), x.size(1), x.size(2), x.size(3), O, Ho, Wo,
          full};
}

struct MorphBackward {
  Sizes gx, gw;
  Window k;
  int64_t N, C, H, W, O, Ho, Wo;
  bool full;
  Range argmax;
};

inline MorphBackward morph_backward(const Backend& b, const char* op, const Arg& grad,
                                    const Arg& argmax, IntArrayRef input_size,
                                    IntArrayRef weight_size, IntArrayRef stride,
                                    IntArrayRef padding, IntArrayRef dilation) {
  check_float(b, op, "grad", grad.dtype);
  check_argmax(op, grad, argmax);
  TORCH_CHECK(grad.dim() == 4, "tropfx::", op, ": grad and argmax must be (N, O, Ho, Wo), got ",
              grad.sizes);
  TORCH_CHECK(input_size.size() == 4 && (weight_size.size() == 3 || weight_size.size() == 4),
              "tropfx::", op, ": input_size must be (N, C, H, W) and weight_size (C, kh, kw) or "
              "(O, C, kh, kw); got ", input_size, " and ", weight_size);
  for (const int64_t s : input_size) check_size(op, "input_size", s, 0, kInt32Limit);
  for (const int64_t s : weight_size) check_size(op, "weight_size", s, 0, kInt32Limit);
  const bool full = weight_size.size() == 4;
  const int64_t N = input_size[0], C = input_size[1], H = input_size[2], W = input_size[3];
  TORCH_CHECK(weight_size[full ? 1 : 0] == C, "tropfx::", op, ": input_size ", input_size,
              " has ", C, " channels but weight_size is ", weight_size);
  const Window k = window(op, H, W, weight_size[weight_size.size() - 2], weight_size.back(), stride,
                          padding, dilation);
  const int64_t O = grad.size(1);
  TORCH_CHECK(O == (full ? weight_size[0] : C) && grad.size(0) == N, "tropfx::", op, ": grad ",
              grad.sizes, " does not fit input ", input_size, " and weight ", weight_size);
  TORCH_CHECK(C * k.kh * k.kw < kInt32Limit, "tropfx::", op, ": the window must fit the int32 argmax");
  // grad is the forward's output: its (Ho, Wo) under this window, floor or ceil mode.
  const int64_t Ho = grad.size(2), Wo = grad.size(3);
  const bool fits = (Ho == pool_out(H, k.kh, k.sh, k.ph, k.dh, false) ||
                     Ho == pool_out(H, k.kh, k.sh, k.ph, k.dh, true)) &&
                    (Wo == pool_out(W, k.kw, k.sw, k.pw, k.dw, false) ||
                     Wo == pool_out(W, k.kw, k.sw, k.pw, k.dw, true));
  TORCH_CHECK(fits, "tropfx::", op, ": grad ", grad.sizes, " is not the output size of input ",
              input_size, " under this window (stride ", stride, ", padding ", padding,
              ", dilation ", dilation, ")");
  return {input_size.vec(), weight_size.vec(), k, N, C, H, W, O, Ho, Wo, full,
          {"argmax", 0, (full ? C : 1) * k.kh * k.kw}};
}

// --- bit-packed boolean operators -------------------------------------------------------------

// The dtypes the bit operators take.
inline bool bit_dtype(c10::ScalarType t) {
  switch (t) {
    case c10::kBool: case c10::kByte: case c10::kChar: case c10::kShort: case c10::kInt:
    case c10::kLong: case c10::kHalf: case c10::kBFloat16: case c10::kFloat: case c10::kDouble:
      return true;
    default:
      return false;
  }
}

inline void check_bits(const char* op, const char* name, const Arg& t, int64_t dim) {
  TORCH_CHECK(t.dtype == c10::kUInt64 && t.dim() == dim, "tropfx::", op, ": ", name, " must be a ",
              dim, "-D uint64 tensor of packed bits (tropfx::pack_bits), got ", t.dtype, " of ",
              t.dim(), " dims");
}

inline Sizes pack_bits(const Arg& x) {
  TORCH_CHECK(x.dim() == 4, "tropfx::pack_bits: x must be (N, C, H, W), got ", x.sizes);
  TORCH_CHECK(bit_dtype(x.dtype), "tropfx::pack_bits: unsupported dtype ", x.dtype);
  return {x.size(0), x.size(2), x.size(3), ceil_div(x.size(1), 64)};
}

inline Sizes unpack_bits(const Arg& packed, int64_t C, std::optional<c10::ScalarType> dtype) {
  check_bits("unpack_bits", "packed", packed, 4);
  const c10::ScalarType t = dtype.value_or(c10::kFloat);
  TORCH_CHECK(bit_dtype(t), "tropfx::unpack_bits: unsupported dtype ", t);
  TORCH_CHECK(C >= 0 && C <= packed.size(3) * 64 && ceil_div(C, 64) == packed.size(3),
              "tropfx::unpack_bits: ", C, " channels do not fit ", packed.size(3),
              " words per pixel");
  return {packed.size(0), C, packed.size(1), packed.size(2)};
}

// The geometry of a packed (N, H, W, Cw) input under a window; stride, not ceil mode.
struct Bits {
  Sizes out;
  Window k;
  int64_t N, H, W, Cw, Ho, Wo;
};

inline Bits bit_geometry(const char* op, const Arg& x, int64_t kh, int64_t kw, int64_t out_words,
                         IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation) {
  const Window k = window(op, x.size(1), x.size(2), kh, kw, stride, padding, dilation);
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2);
  TORCH_CHECK(H + 2 * k.ph >= k.dh * (k.kh - 1) + 1 && W + 2 * k.pw >= k.dw * (k.kw - 1) + 1,
              "tropfx::", op, ": the kernel is larger than the padded input");
  const int64_t Ho = (H + 2 * k.ph - k.dh * (k.kh - 1) - 1) / k.sh + 1;
  const int64_t Wo = (W + 2 * k.pw - k.dw * (k.kw - 1) - 1) / k.sw + 1;
  return {{N, Ho, Wo, out_words}, k, N, H, W, x.size(3), Ho, Wo};
}

struct BoolConv {
  Bits g;
  int64_t O, Pp, Pn;
};

inline BoolConv bool_conv2d(const Arg& x, const Arg& pos, const Arg& neg, const Arg& threshold,
                            IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation) {
  const char* op = "bool_conv2d";
  check_bits(op, "x", x, 4);
  check_bits(op, "weight_pos", pos, 5);
  check_bits(op, "weight_neg", neg, 5);
  const int64_t O = pos.size(0), kh = pos.size(1), kw = pos.size(2), Pp = pos.size(3);
  const int64_t Pn = neg.size(3), Cw = x.size(3);
  TORCH_CHECK(pos.size(4) == Cw && neg.size(0) == O && neg.size(1) == kh && neg.size(2) == kw &&
                  neg.size(4) == Cw,
              "tropfx::bool_conv2d: weight planes ", pos.sizes, " and ", neg.sizes,
              " must be (O, kh, kw, planes, Cw) with the Cw = ", Cw, " of x");
  TORCH_CHECK(Pp + Pn <= 62, "tropfx::bool_conv2d: too many weight planes (", Pp, " + ", Pn,
              "; at most 62)");
  TORCH_CHECK(c10::isIntegralType(threshold.dtype, /*includeBool=*/true) && threshold.dim() == 1 &&
                  threshold.size(0) == O,
              "tropfx::bool_conv2d: threshold must be an integer tensor (", O, "), got ",
              threshold.dtype, " ", threshold.sizes);
  return {bit_geometry(op, x, kh, kw, ceil_div(O, 64), stride, padding, dilation), O, Pp, Pn};
}

inline Bits bit_morph(const char* op, const Arg& x, const Arg& se, IntArrayRef stride,
                      IntArrayRef padding, IntArrayRef dilation) {
  check_bits(op, "x", x, 4);
  TORCH_CHECK(se.dtype == c10::kBool && se.dim() == 3, "tropfx::", op,
              ": se must be a bool (C, kh, kw) tensor, got ", se.dtype, " ", se.sizes);
  const int64_t C = se.size(0), Cw = x.size(3);
  TORCH_CHECK(ceil_div(C, 64) == Cw, "tropfx::", op, ": se has ", C, " channels, x ", Cw,
              " words per pixel");
  return bit_geometry(op, x, se.size(1), se.size(2), Cw, stride, padding, dilation);
}

}  // namespace tropfx::contract
