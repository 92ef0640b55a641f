// The tropfx operators: their schemas, written once (TORCH_LIBRARY), and their CPU
// implementations <op>_cpu (TORCH_LIBRARY_IMPL): checks, allocation and threading
// (at::parallel_for, OpenMP in torch's builds); the math is in the torch-free headers. Fake (meta)
// implementations, autograd formulas and pure-torch references: tropfx/kernels/ops.py and
// reference.py. One translation unit: torch's headers are the slow part of the build, and the
// bindings are thin, so this file is optimized less (the kernels' own files get -O3).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("O1")
#endif
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <tuple>
#include <vector>

#include "binding_utils.h"
#include "boolean.h"
#include "maxplus.h"
#include "morphology.h"
#include "output_cache.h"

namespace {

using at::Tensor;
using namespace tropfx::binding;  // ceil_div, wrap_dim, Window, window_of, pool_out

void check_float(const Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "tropfx::", op, ": ", name, " is on ", t.device(),
              "; these are the CPU kernels");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "tropfx::", op,
              ": ", name, " is ", t.scalar_type(),
              "; the kernels support float32 and float64 (convert with .float(), or use the "
              "reference in tropfx.nn.functional / tropfx.nn.morphology)");
}

void check_same(const Tensor& a, const Tensor& b, const char* op, const char* name) {
  TORCH_CHECK(b.device().is_cpu(), "tropfx::", op, ": ", name, " is on ", b.device(), ", x on the CPU");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "tropfx::", op, ": ", name, " is ",
              b.scalar_type(), " but x is ", a.scalar_type(), "; convert one of them");
}

void check_int32(const Tensor& t, const char* op) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kInt, "tropfx::", op,
              ": argmax must be the int32 CPU tensor the forward returned, got ", t.scalar_type());
}

void check_bits(const Tensor& t, const char* op, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kUInt64 && t.dim() == dim, "tropfx::",
              op, ": ", name, " must be a ", dim, "-D uint64 CPU tensor of packed bits (tropfx::pack_bits),"
              " got ", t.scalar_type(), " of ", t.dim(), " dims");
}

// Scratch memory for one call, ``words`` uint64 aligned to a cache line. Up to kKeptWords (16 MiB)
// it is the calling thread's buffer, kept from call to call (slots 0 and 1: two alive at once): a
// fresh allocation of this size comes from mmap every time once the model's other large tensors
// move glibc's heap, and its page faults cost up to a third of a boolean convolution at 64 x 56 x
// 56. Larger ones are allocated for the call and freed after it.
class Scratch {
 public:
  static constexpr int64_t kKeptWords = int64_t(1) << 21;
  Scratch(int slot, int64_t words) {
    std::vector<uint64_t>* v = &owned_;
    if (words <= kKeptWords) {
      thread_local std::vector<uint64_t> kept[2];
      v = &kept[slot];
    }
    if (int64_t(v->size()) < words + 8) v->resize(words + 8);
    data_ = v->data() + (-(reinterpret_cast<uintptr_t>(v->data()) / 8) & 7u);
  }
  Scratch(const Scratch&) = delete;  // data_ may point into owned_
  Scratch& operator=(const Scratch&) = delete;
  uint64_t* get() const { return data_; }

 private:
  std::vector<uint64_t> owned_;
  uint64_t* data_;
};

// ---------------------------------------------------------------------------------------------
// Dense max-plus

std::tuple<Tensor, Tensor> maxplus_cpu(const Tensor& x_, const Tensor& weight_,
                                       const std::optional<Tensor>& bias_, bool minplus,
                                       bool with_argmax) {
  check_float(x_, "maxplus", "x");
  check_same(x_, weight_, "maxplus", "weight");
  TORCH_CHECK(x_.dim() >= 1 && weight_.dim() == 2 && x_.size(-1) == weight_.size(1),
              "tropfx::maxplus: x (..., in) must fit weight (out, in); got x ", x_.sizes(),
              " and weight ", weight_.sizes());
  const int64_t K = weight_.size(1), M = weight_.size(0), B = x_.numel() / std::max<int64_t>(K, 1);
  TORCH_CHECK(K > 0, "tropfx::maxplus: in_features is 0; a max over no input is undefined");
  TORCH_CHECK(K < (int64_t(1) << 31), "tropfx::maxplus: in_features must fit the int32 argmax");
  Tensor bias;
  if (bias_.has_value()) {
    bias = bias_->contiguous();
    check_same(x_, bias, "maxplus", "bias");
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == M, "tropfx::maxplus: bias must be (", M,
                "), got ", bias.sizes());
  }
  const Tensor x = x_.contiguous(), w = weight_.contiguous();
  auto shape = x.sizes().vec();
  shape.back() = M;
  Tensor y = output_empty(shape, x.options());
  Tensor arg = output_empty(with_argmax ? shape : std::vector<int64_t>{0}, x.options().dtype(at::kInt));
  if (B == 0 || M == 0) return {y, arg};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tropfx::maxplus", [&] {
    using Tiling = tropfx::DenseTiling<scalar_t>;
    const tropfx::DenseArgs<scalar_t> a{x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                        bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
                                        y.mutable_data_ptr<scalar_t>(),
                                        with_argmax ? arg.mutable_data_ptr<int32_t>() : nullptr,
                                        B, K, M, minplus};
    const int64_t panels = Tiling::panels(M);
    const Scratch packed_store(0, ceil_div(panels * K * Tiling::NR * int64_t(sizeof(scalar_t)), 8));
    scalar_t* packed = reinterpret_cast<scalar_t*>(packed_store.get());
    std::atomic<bool> clean{true};
    at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
      if (!tropfx::dense_pack(a, packed, p0, p1)) clean = false;
    });
    // Tasks: row blocks x panel groups, enough of them to keep every thread busy. The blocks
    // split the rows evenly (in whole register tiles, the last one excepted): each thread takes a
    // contiguous range of tasks, and one short block at the end would leave a thread idle.
    const int64_t blocks = ceil_div(B, Tiling::MB);
    const int64_t groups = std::min<int64_t>(panels, ceil_div(4 * at::get_num_threads(), blocks));
    const int64_t per_group = ceil_div(panels, groups);
    const int64_t tiles = ceil_div(B, Tiling::MR);
    auto row = [&](int64_t r) { return std::min(B, r * tiles / blocks * Tiling::MR); };
    const bool weights_clean = clean.load();
    at::parallel_for(0, blocks * groups, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r = t / groups, g = t % groups;
        const int64_t p0 = g * per_group, p1 = std::min(panels, p0 + per_group);
        if (p0 < p1 && row(r) < row(r + 1))
          tropfx::dense_forward(a, packed, weights_clean, row(r), row(r + 1), p0, p1);
      }
    });
  });
  return {y, arg};
}

std::tuple<Tensor, Tensor, Tensor> maxplus_backward_cpu(const Tensor& grad_, const Tensor& arg_,
                                                        int64_t K, bool has_bias, bool minplus) {
  check_float(grad_, "maxplus_backward", "grad");
  check_int32(arg_, "maxplus_backward");
  TORCH_CHECK(grad_.sizes() == arg_.sizes(), "tropfx::maxplus_backward: grad ", grad_.sizes(),
              " and argmax ", arg_.sizes(), " differ; was the forward run with with_argmax=True?");
  const Tensor g = grad_.contiguous(), arg = arg_.contiguous();
  const int64_t M = g.size(-1), B = g.numel() / std::max<int64_t>(M, 1);
  auto shape = g.sizes().vec();
  shape.back() = K;
  Tensor gx = output_zeros(shape, g.options());
  Tensor gw = output_zeros({M, K}, g.options());
  Tensor gb = output_zeros({has_bias ? M : 0}, g.options());
  if (B == 0 || M == 0) return {gx, gw, gb};
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "tropfx::maxplus_backward", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const int32_t* ap = arg.const_data_ptr<int32_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, 16, [&](int64_t r0, int64_t r1) {
      tropfx::dense_backward_input(gp, ap, gxp, K, M, minplus, r0, r1);
    });
    scalar_t* gwp = gw.mutable_data_ptr<scalar_t>();
    scalar_t* gbp = has_bias ? gb.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, M, 16, [&](int64_t o0, int64_t o1) {
      tropfx::dense_backward_weight(gp, ap, gwp, gbp, B, K, M, minplus, o0, o1);
    });
  });
  return {gx, gw, gb};
}

// ---------------------------------------------------------------------------------------------
// Sparse max-plus

std::tuple<Tensor, Tensor> sparse_maxplus_cpu(const Tensor& x_, const Tensor& index_,
                                              const Tensor& value_, const std::optional<Tensor>& bias_,
                                              int64_t dim, bool minplus, bool with_argmax) {
  const char* op = "sparse_maxplus";
  check_float(x_, op, "x");
  check_same(x_, value_, op, "value");
  TORCH_CHECK(x_.dim() >= 1, "tropfx::sparse_maxplus: x must have a feature dim");
  dim = wrap_dim(dim, x_.dim(), op);
  TORCH_CHECK(index_.device().is_cpu() && index_.scalar_type() == at::kLong && index_.dim() == 2 &&
                  value_.sizes() == index_.sizes()
                  && index_.size(1) >= 1,
              "tropfx::sparse_maxplus: index must be int64 (out, k >= 1) and value of the same shape; "
              "got index ", index_.scalar_type(), " ", index_.sizes(), " and value ", value_.sizes());
  const int64_t out = index_.size(0), k = index_.size(1), in = x_.size(dim);
  Tensor bias;
  if (bias_.has_value()) {
    bias = bias_->contiguous();
    check_same(x_, bias, op, "bias");
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == out, "tropfx::sparse_maxplus: bias must be (",
                out, "), got ", bias.sizes());
  }
  const Tensor x = x_.contiguous(), index = index_.contiguous(), value = value_.contiguous();
  {
    const int64_t* ip = index.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < index.numel(); ++i)
      TORCH_CHECK(ip[i] >= 0 && ip[i] < in, "tropfx::sparse_maxplus: index holds ", ip[i],
                  ", outside [0, ", in, ")");
    TORCH_CHECK(in < (int64_t(1) << 31) && k < (int64_t(1) << 31),
                "tropfx::sparse_maxplus: sizes past 2^31 are not supported");
  }
  auto shape = x.sizes().vec();
  shape[dim] = out;
  Tensor y = output_empty(shape, x.options());
  Tensor arg = output_empty(with_argmax ? shape : std::vector<int64_t>{0}, x.options().dtype(at::kInt));
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= x.size(d);
  for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= x.size(d);
  if (y.numel() == 0) return {y, arg};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tropfx::sparse_maxplus", [&] {
    const tropfx::SparseArgs<scalar_t> a{x.const_data_ptr<scalar_t>(), index.const_data_ptr<int64_t>(),
                                         value.const_data_ptr<scalar_t>(),
                                         bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
                                         y.mutable_data_ptr<scalar_t>(),
                                         with_argmax ? arg.mutable_data_ptr<int32_t>() : nullptr,
                                         outer, in, inner, out, k, minplus};
    if (inner == 1) {
      // int32 indices and signed values / bias, compact, read once per group of rows
      // (k, out): the kernels read term j of 8 neighbouring outputs with one load
      std::vector<int32_t> idx(out * k);
      std::vector<scalar_t> val(out * k), b(a.bias != nullptr ? out : 0);
      for (int64_t o = 0; o < out; ++o)
        for (int64_t j = 0; j < k; ++j) {
          idx[j * out + o] = int32_t(a.index[o * k + j]);
          val[j * out + o] = minplus ? -a.value[o * k + j] : a.value[o * k + j];
        }
      for (int64_t o = 0; o < int64_t(b.size()); ++o) b[o] = minplus ? -a.bias[o] : a.bias[o];
      const scalar_t* bp = a.bias != nullptr ? b.data() : nullptr;
      at::parallel_for(0, outer, std::max<int64_t>(8, 16384 / std::max<int64_t>(out * k, 1)),
                       [&](int64_t r0, int64_t r1) {
                         tropfx::sparse_forward_rows(a, idx.data(), val.data(), bp, r0, r1);
                       });
    } else {
      at::parallel_for(0, outer * out, std::max<int64_t>(1, 16384 / (inner * k)),
                       [&](int64_t t0, int64_t t1) { tropfx::sparse_forward_inner(a, t0, t1); });
    }
  });
  return {y, arg};
}

std::tuple<Tensor, Tensor, Tensor> sparse_maxplus_backward_cpu(const Tensor& grad_, const Tensor& arg_,
                                                               const Tensor& index_, int64_t in,
                                                               int64_t dim, bool has_bias,
                                                               bool minplus) {
  const char* op = "sparse_maxplus_backward";
  check_float(grad_, op, "grad");
  check_int32(arg_, op);
  TORCH_CHECK(grad_.sizes() == arg_.sizes(), "tropfx::sparse_maxplus_backward: grad ", grad_.sizes(),
              " and argmax ", arg_.sizes(), " differ; was the forward run with with_argmax=True?");
  TORCH_CHECK(index_.scalar_type() == at::kLong && index_.dim() == 2,
              "tropfx::sparse_maxplus_backward: index must be int64 (out, k)");
  dim = wrap_dim(dim, grad_.dim(), op);
  const Tensor g = grad_.contiguous(), arg = arg_.contiguous(), index = index_.contiguous();
  const int64_t out = index.size(0), k = index.size(1);
  TORCH_CHECK(g.size(dim) == out, "tropfx::sparse_maxplus_backward: grad has ", g.size(dim),
              " outputs along dim ", dim, ", index ", out);
  auto shape = g.sizes().vec();
  shape[dim] = in;
  Tensor gx = output_zeros(shape, g.options());
  Tensor gv = output_zeros({out, k}, g.options());
  Tensor gb = output_zeros({has_bias ? out : 0}, g.options());
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= g.size(d);
  for (int64_t d = dim + 1; d < g.dim(); ++d) inner *= g.size(d);
  if (g.numel() == 0) return {gx, gv, gb};
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "tropfx::sparse_maxplus_backward", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const int32_t* ap = arg.const_data_ptr<int32_t>();
    const int64_t* ip = index.const_data_ptr<int64_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    // Tasks own (row, inner block) slices of grad_x, so each destination is summed in order.
    const int64_t blocks = outer >= 4 * at::get_num_threads() ? 1 : std::min<int64_t>(inner, 64);
    const int64_t per = ceil_div(inner, blocks);
    at::parallel_for(0, outer * blocks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / blocks, s0 = (t % blocks) * per, s1 = std::min(inner, s0 + per);
        if (s0 < s1)
          tropfx::sparse_backward_input(gp, ap, ip, gxp, in, inner, out, k, minplus, b, b + 1, s0, s1);
      }
    });
    scalar_t* gvp = gv.mutable_data_ptr<scalar_t>();
    scalar_t* gbp = has_bias ? gb.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, out, 16, [&](int64_t o0, int64_t o1) {
      tropfx::sparse_backward_value(gp, ap, gvp, gbp, outer, inner, out, k, minplus, o0, o1);
    });
  });
  return {gx, gv, gb};
}

// ---------------------------------------------------------------------------------------------
// Morphology

template <typename T>
tropfx::MorphArgs<T> morph_args(const Tensor& x, const Tensor& w, const Window& k, int64_t O,
                                int64_t Ho, int64_t Wo, bool full, bool erode) {
  return {nullptr, nullptr, nullptr, nullptr, x.size(0), x.size(1), x.size(2), x.size(3), O, Ho, Wo,
          int(k.kh), int(k.kw), int(k.sh), int(k.sw), int(k.ph), int(k.pw), int(k.dh), int(k.dw),
          full, erode};
}

std::tuple<Tensor, Tensor> morph_cpu(const char* op, const Tensor& x_, const Tensor& w_,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, bool ceil_mode, bool with_argmax,
                                     bool erode) {
  check_float(x_, op, "x");
  check_same(x_, w_, op, "weight");
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
  TORCH_CHECK(w_.numel() / w_.size(0) < (int64_t(1) << 31), "tropfx::", op,
              ": the window must fit the int32 argmax");
  const int64_t O = full ? w_.size(0) : x_.size(1);
  const Tensor x = x_.contiguous(), w = w_.contiguous();
  const std::vector<int64_t> shape{x.size(0), O, Ho, Wo};
  Tensor y = output_empty(shape, x.options());
  Tensor arg = output_empty(with_argmax ? shape : std::vector<int64_t>{0}, x.options().dtype(at::kInt));
  if (y.numel() == 0) return {y, arg};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tropfx::morphology", [&] {
    auto a = morph_args<scalar_t>(x, w, k, O, Ho, Wo, full, erode);
    a.x = x.const_data_ptr<scalar_t>();
    a.w = w.const_data_ptr<scalar_t>();
    a.y = y.mutable_data_ptr<scalar_t>();
    a.arg = with_argmax ? arg.mutable_data_ptr<int32_t>() : nullptr;
    const bool clean_se = tropfx::se_clean(a.w, w.numel());
    const int64_t N = a.N, C = a.C;
    if (!full) {
      at::parallel_for(0, N * C, 1, [&](int64_t t0, int64_t t1) {
        tropfx::morph_forward_channels(a, clean_se, t0, t1);
      });
      return;
    }
    const auto g = tropfx::PaddedPlane::of(a);
    std::vector<scalar_t> padded(N * C * g.size());
    std::vector<uint8_t> spoiled_planes(N * C), spoiled(N, 0);
    at::parallel_for(0, N * C, 1, [&](int64_t t0, int64_t t1) {
      tropfx::morph_pad_planes(a, padded.data(), spoiled_planes.data(), t0, t1);
    });
    for (int64_t t = 0; t < N * C; ++t) spoiled[t / C] |= spoiled_planes[t];
    // The SE as (C, K, tiles * kFullChannels): one tile's channels adjacent, zero past O.
    const int64_t K = k.kh * k.kw, OT = tropfx::kFullChannels, tiles = ceil_div(O, OT);
    std::vector<scalar_t> wt(C * K * tiles * OT, scalar_t(0));
    for (int64_t o = 0; o < O; ++o)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t q = 0; q < K; ++q) wt[(c * K + q) * tiles * OT + o] = a.w[(o * C + c) * K + q];
    at::parallel_for(0, N * tiles * Ho, 1, [&](int64_t t0, int64_t t1) {
      tropfx::morph_forward_full(a, padded.data(), wt.data(), spoiled.data(), clean_se, t0, t1);
    });
  });
  return {y, arg};
}

std::tuple<Tensor, Tensor> dilation2d_cpu(const Tensor& x, const Tensor& w, at::IntArrayRef stride,
                                          at::IntArrayRef padding, at::IntArrayRef dilation,
                                          bool ceil_mode, bool with_argmax) {
  return morph_cpu("dilation2d", x, w, stride, padding, dilation, ceil_mode, with_argmax, false);
}

std::tuple<Tensor, Tensor> erosion2d_cpu(const Tensor& x, const Tensor& w, at::IntArrayRef stride,
                                         at::IntArrayRef padding, at::IntArrayRef dilation,
                                         bool ceil_mode, bool with_argmax) {
  return morph_cpu("erosion2d", x, w, stride, padding, dilation, ceil_mode, with_argmax, true);
}

std::tuple<Tensor, Tensor> morph_backward_cpu(const char* op, const Tensor& grad_, const Tensor& arg_,
                                              at::IntArrayRef input_size, at::IntArrayRef weight_size,
                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                              at::IntArrayRef dilation, bool erode) {
  check_float(grad_, op, "grad");
  check_int32(arg_, op);
  TORCH_CHECK(grad_.dim() == 4 && grad_.sizes() == arg_.sizes(), "tropfx::", op, ": grad ",
              grad_.sizes(), " and argmax ", arg_.sizes(),
              " must be the same (N, O, Ho, Wo); was the forward run with with_argmax=True?");
  TORCH_CHECK(input_size.size() == 4 && (weight_size.size() == 3 || weight_size.size() == 4),
              "tropfx::", op, ": input_size must be (N, C, H, W) and weight_size (C, kh, kw) or "
              "(O, C, kh, kw)");
  const bool full = weight_size.size() == 4;
  const Window k = window_of(op, weight_size[weight_size.size() - 2], weight_size.back(), stride,
                             padding, dilation);
  const Tensor g = grad_.contiguous(), arg = arg_.contiguous();
  Tensor gx = output_zeros(input_size, g.options());
  Tensor gw = output_zeros(weight_size, g.options());
  const int64_t O = g.size(1), Ho = g.size(2), Wo = g.size(3);
  TORCH_CHECK(O == (full ? weight_size[0] : input_size[1]) && g.size(0) == input_size[0], "tropfx::",
              op, ": grad ", g.sizes(), " does not fit input ", input_size, " and weight ", weight_size);
  if (g.numel() == 0) return {gx, gw};
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "tropfx::morphology_backward", [&] {
    auto a = morph_args<scalar_t>(gx, gw, k, O, Ho, Wo, full, erode);
    a.arg = const_cast<int32_t*>(arg.const_data_ptr<int32_t>());
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    scalar_t* gwp = gw.mutable_data_ptr<scalar_t>();
    if (!full) {
      at::parallel_for(0, a.C, 1, [&](int64_t c0, int64_t c1) {
        tropfx::morph_backward_channels(a, gp, gxp, gwp, c0, c1);
      });
    } else {
      at::parallel_for(0, a.N, 1, [&](int64_t n0, int64_t n1) {
        tropfx::morph_backward_full_input(a, gp, gxp, n0, n1);
      });
      at::parallel_for(0, O, 1, [&](int64_t o0, int64_t o1) {
        tropfx::morph_backward_full_weight(a, gp, gwp, o0, o1);
      });
    }
  });
  return {gx, gw};
}

std::tuple<Tensor, Tensor> dilation2d_backward_cpu(const Tensor& grad, const Tensor& arg,
                                                   at::IntArrayRef input_size, at::IntArrayRef weight_size,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation) {
  return morph_backward_cpu("dilation2d_backward", grad, arg, input_size, weight_size, stride,
                            padding, dilation, false);
}

std::tuple<Tensor, Tensor> erosion2d_backward_cpu(const Tensor& grad, const Tensor& arg,
                                                  at::IntArrayRef input_size, at::IntArrayRef weight_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation) {
  return morph_backward_cpu("erosion2d_backward", grad, arg, input_size, weight_size, stride,
                            padding, dilation, true);
}

// ---------------------------------------------------------------------------------------------
// Bit-packed boolean operators

Tensor pack_bits_cpu(const Tensor& x_) {
  TORCH_CHECK(x_.device().is_cpu() && x_.dim() == 4, "tropfx::pack_bits: x must be a (N, C, H, W) "
              "CPU tensor, got ", x_.sizes());
  const bool half = x_.scalar_type() == at::kHalf || x_.scalar_type() == at::kBFloat16;
  const Tensor x = (half ? x_.to(at::kFloat) : x_).contiguous();  // nonzero is kept
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  Tensor out = output_empty({N, H, W, ceil_div(C, 64)}, x.options().dtype(at::kUInt64));
  if (out.numel() == 0) return out;
  AT_DISPATCH_ALL_TYPES_AND(at::kBool, x.scalar_type(), "tropfx::pack_bits", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    uint64_t* op = out.mutable_data_ptr<uint64_t>();
    at::parallel_for(0, N * H, 1, [&](int64_t t0, int64_t t1) {
      tropfx::pack_bits_rows(xp, op, C, H, W, t0, t1);
    });
  });
  return out;
}

Tensor unpack_bits_cpu(const Tensor& packed_, int64_t C, std::optional<at::ScalarType> dtype) {
  check_bits(packed_, "unpack_bits", "packed", 4);
  const Tensor packed = packed_.contiguous();
  const int64_t N = packed.size(0), H = packed.size(1), W = packed.size(2), Cw = packed.size(3);
  TORCH_CHECK(C >= 0 && ceil_div(C, 64) == Cw, "tropfx::unpack_bits: ", C, " channels do not fit ",
              Cw, " words per pixel");
  const at::ScalarType want = dtype.value_or(at::kFloat);
  const bool half = want == at::kHalf || want == at::kBFloat16;
  Tensor out = output_empty({N, C, H, W}, packed.options().dtype(half ? at::kFloat : want));
  if (out.numel() == 0) return half ? out.to(want) : out;
  AT_DISPATCH_ALL_TYPES_AND(at::kBool, out.scalar_type(), "tropfx::unpack_bits", [&] {
    const uint64_t* pp = packed.const_data_ptr<uint64_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * H, 1, [&](int64_t t0, int64_t t1) {
      tropfx::unpack_bits_rows(pp, op, C, H, W, Cw, t0, t1);
    });
  });
  return half ? out.to(want) : out;
}

tropfx::BitGeometry bit_geometry(const char* op, const Tensor& x, int64_t kh, int64_t kw,
                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation) {
  const Window k = window_of(op, kh, kw, stride, padding, dilation);
  TORCH_CHECK(x.size(1) + 2 * k.ph >= k.dh * (k.kh - 1) + 1 &&
                  x.size(2) + 2 * k.pw >= k.dw * (k.kw - 1) + 1,
              "tropfx::", op, ": the kernel is larger than the padded input");
  tropfx::BitGeometry g{x.size(0), x.size(1), x.size(2), x.size(3), 0, 0, int(k.kh), int(k.kw),
                        int(k.sh), int(k.sw), int(k.ph), int(k.pw), int(k.dh), int(k.dw), 0, 0};
  g.finish();
  return g;
}

std::vector<uint64_t> pad_bits(const Tensor& x, const tropfx::BitGeometry& g, uint64_t fill) {
  std::vector<uint64_t> padded(g.N * g.Hq * g.Wq * g.Cw);
  const uint64_t* xp = x.const_data_ptr<uint64_t>();
  at::parallel_for(0, g.N * g.Hq, 16, [&](int64_t t0, int64_t t1) {
    tropfx::pad_bits_rows(xp, padded.data(), g, fill, t0, t1);
  });
  return padded;
}

// The packed weight planes of bool_conv2d: word w of plane p at offset (ki, kj) of output o, the
// Pp positive planes first, then the Pn negative ones.
struct WeightWords {
  const uint64_t* pos;
  const uint64_t* neg;
  int64_t kh, kw, Pp, Pn, Cw;
  int64_t planes() const { return Pp + Pn; }
  uint64_t operator()(int64_t o, int64_t ki, int64_t kj, int64_t p, int64_t w) const {
    return p < Pp ? pos[(((o * kh + ki) * kw + kj) * Pp + p) * Cw + w]
                  : neg[(((o * kh + ki) * kw + kj) * Pn + (p - Pp)) * Cw + w];
  }
};

// Four channels o0 .. o0 + 3 as a quad (see boolean.h, SliceQuad), or width 0 where counting them
// one by one is cheaper (their cost model: the union's taps padded to 8 per pattern plus the
// planes of the 22 additions that sum the pattern counts, about a tap's work each, against each
// channel's taps padded to 16), or where one of them exits early or has a constant output.
tropfx::SliceQuad choose_quad(const WeightWords& word, const std::vector<tropfx::SliceTaps>& taps,
                              const int64_t* threshold, const tropfx::SliceGeometry& s, int64_t o0) {
  tropfx::SliceQuad quad;
  quad.o0 = o0;
  quad.width = 0;  // not shared
  int64_t alone = 0;
  for (int k = 0; k < 4; ++k) {
    const int64_t t = threshold[o0 + k], real = taps[o0 + k].real[0];
    if (t <= 0 || t > real || tropfx::slice_exits_early(t, real)) return quad;
    alone += ceil_div(real, 16) * 16;
  }
  // The channel bits of pattern m at term (q = ki * kw + kj, word w): bits[(m * kh * kw + q) * Cw + w].
  const int64_t kh = word.kh, kw = word.kw, Cw = word.Cw, terms = kh * kw * Cw;
  std::vector<uint64_t> bits(16 * terms);
  for (int64_t q = 0; q < kh * kw; ++q)
    for (int64_t w = 0; w < Cw; ++w) {
      uint64_t v[4];
      for (int k = 0; k < 4; ++k) v[k] = word(o0 + k, q / kw, q % kw, 0, w);
      for (int m = 1; m < 16; ++m) {
        uint64_t b = ~uint64_t(0);
        for (int k = 0; k < 4; ++k) b &= (m >> k) & 1 ? v[k] : ~v[k];
        bits[m * terms + q * Cw + w] = b;
      }
    }
  int64_t padded[16] = {}, tap_count = 0;
  int pw = 4;  // planes of the widest pattern count (slice_width: at least 4)
  for (int m = 1; m < 16; ++m) {
    quad.real[m] = 0;
    for (int64_t i = 0; i < terms; ++i) quad.real[m] += __builtin_popcountll(bits[m * terms + i]);
    padded[m] = ceil_div(quad.real[m], 8) * 8;
    tap_count += padded[m];
    pw = std::max(pw, tropfx::slice_width(padded[m]));
  }
  if (pw > tropfx::kQuadBits - 3) return quad;  // the channel sums need pw + 3 planes
  // the sums' planes (quad_hits), about a tap's work each
  if (tap_count + 22 * pw + 26 >= alone) return quad;  // the four channels one by one are cheaper
  quad.width = pw;
  quad.begin[0] = quad.begin[1] = 0, quad.real[0] = 0;
  quad.offsets.reserve(tap_count);
  for (int m = 1; m < 16; ++m) {
    const uint64_t* mb = &bits[m * terms];
    for (int64_t ki = 0; ki < kh; ++ki)
      for (int64_t kj = 0; kj < kw; ++kj, mb += Cw)
        for (int64_t w = 0; w < Cw; ++w)
          for (uint64_t b = mb[w]; b != 0; b &= b - 1) {
            const int64_t c = w * 64 + __builtin_ctzll(b);
            quad.offsets.push_back(int32_t(tropfx::slice_tap_offset(s, c, ki, kj)));
          }
    quad.offsets.resize(quad.begin[m] + padded[m], int32_t(s.zero));
    quad.begin[m + 1] = int64_t(quad.offsets.size());
  }
  return quad;
}

// Output o's taps, plane by plane, each plane's padded with zero-plane taps to a multiple of 16.
void single_taps(const WeightWords& word, const tropfx::SliceGeometry& s, int64_t o,
                 tropfx::SliceTaps& t) {
  t.offsets.reserve(word.planes() * (word.kh * word.kw * s.C + 16));
  t.begin.push_back(0);
  for (int64_t p = 0; p < word.planes(); ++p) {
    for (int64_t ki = 0; ki < word.kh; ++ki)
      for (int64_t kj = 0; kj < word.kw; ++kj)
        for (int64_t w = 0; w < word.Cw; ++w)
          for (uint64_t v = word(o, ki, kj, p, w); v != 0; v &= v - 1) {
            const int64_t c = w * 64 + __builtin_ctzll(v);
            t.offsets.push_back(int32_t(tropfx::slice_tap_offset(s, c, ki, kj)));
          }
    t.offsets.resize(t.begin.back() + ceil_div(t.real[p], 16) * 16, int32_t(s.zero));
    t.begin.push_back(int64_t(t.offsets.size()));
  }
}

// The sliced path's weight preprocessing, kept for the layers seen last: in inference a layer's
// weights do not change between calls. The key holds the weight planes' and thresholds'
// words and the geometry the tap offsets depend on, compared in full, so that a hit is exact
// (tensor version counters would miss writes through .data).
struct SlicePrep {
  std::vector<uint64_t> key;
  std::vector<tropfx::SliceTaps> taps;
  std::vector<tropfx::SliceQuad> quads;
  std::vector<int> quad_at;
};

// Least recently used first out, past 64 entries or 64 MiB.
class SlicePrepCache {
 public:
  static constexpr size_t kEntries = 64, kBytes = size_t(64) << 20;
  std::shared_ptr<const SlicePrep> find(const std::vector<uint64_t>& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < entries_.size(); ++i)
      if (entries_[i]->key == key) {
        std::rotate(entries_.begin(), entries_.begin() + i, entries_.begin() + i + 1);  // to front
        return entries_.front();
      }
    return nullptr;
  }
  void add(std::shared_ptr<const SlicePrep> prep) {
    std::lock_guard<std::mutex> lock(mutex_);
    bytes_ += size(*prep);
    entries_.insert(entries_.begin(), std::move(prep));
    while (entries_.size() > 1 && (entries_.size() > kEntries || bytes_ > kBytes)) {
      bytes_ -= size(*entries_.back());
      entries_.pop_back();
    }
  }

 private:
  static size_t size(const SlicePrep& p) {
    size_t n = p.key.size() * 8 + p.quad_at.size() * 4;
    for (const tropfx::SliceTaps& t : p.taps)
      n += t.offsets.size() * 4 + (t.begin.size() + t.real.size()) * 8;
    for (const tropfx::SliceQuad& q : p.quads) n += sizeof(q) + q.offsets.size() * 4;
    return n;
  }
  std::mutex mutex_;
  std::vector<std::shared_ptr<const SlicePrep>> entries_;
  size_t bytes_ = 0;
};

SlicePrepCache& slice_prep_cache() {
  static SlicePrepCache cache;
  return cache;
}

// The bit-sliced path (stride 1; see boolean.h, SliceGeometry): false if it does not apply.
bool bool_conv2d_sliced(const Tensor& x, const Tensor& pos, const Tensor& neg, const Tensor& threshold,
                        const tropfx::BitGeometry& g, Tensor& out) {
  if (g.sh != 1 || g.sw != 1) return false;
  // A word holds 64 output pixels of a row: with rows much shorter, most lanes idle and the
  // popcount kernel (4 pixels per vector, no lane wasted) is cheaper: with 64 -> 64 channels, 3 x 3,
  // the two break even near 40 of 64 pixels (5.3 against 5.5 ms at N = 32, one thread).
  if (5 * g.Wo < 3 * 64 * ceil_div(g.Wo, 64)) return false;
  const int64_t O = pos.size(0), kh = g.kh, kw = g.kw, Pp = pos.size(3), Pn = neg.size(3);
  const int64_t Cw = g.Cw, P = Pp + Pn;
  // Each plane's count is at most C * kh * kw (+ padding taps); their shifted sum must fit in 60 bits.
  const int max_width = tropfx::slice_width(ceil_div(Cw * 64 * kh * kw, 16) * 16);
  const int planes_bits = 64 - __builtin_clzll(uint64_t(P));
  if (max_width + std::max(Pp, Pn) + planes_bits > 60) return false;
  const WeightWords word{pos.const_data_ptr<uint64_t>(), neg.const_data_ptr<uint64_t>(), kh, kw,
                         Pp, Pn, Cw};
  // Only the channels some weight reads get planes.
  int64_t C = 0;
  for (int64_t o = 0; o < O; ++o)
    for (int64_t q = 0; q < kh * kw; ++q)
      for (int64_t p = 0; p < P; ++p)
        for (int64_t w = 0; w < Cw; ++w)
          if (const uint64_t v = word(o, q / kw, q % kw, p, w))
            C = std::max<int64_t>(C, w * 64 + 64 - __builtin_clzll(v));
  const tropfx::SliceGeometry s = tropfx::slice_geometry(g, C);
  if (s.image >= (int64_t(1) << 31)) return false;  // tap offsets are int32
  // The weights' preprocessing (a tenth of the call at 64 -> 64 channels, 56 x 56, N = 8; most of
  // it at N = 1), or the same weights' from a recent call.
  const int64_t* tp = threshold.const_data_ptr<int64_t>();
  std::vector<uint64_t> key{uint64_t(O), uint64_t(kh), uint64_t(kw), uint64_t(Pp), uint64_t(Pn),
                            uint64_t(Cw), uint64_t(s.dh), uint64_t(s.Ps), uint64_t(s.Wow),
                            uint64_t(s.lanes), uint64_t(s.zero)};
  key.insert(key.end(), word.pos, word.pos + O * kh * kw * Pp * Cw);
  key.insert(key.end(), word.neg, word.neg + O * kh * kw * Pn * Cw);
  const uint64_t* tw = reinterpret_cast<const uint64_t*>(tp);  // the thresholds' int64 words
  key.insert(key.end(), tw, tw + O);
  std::shared_ptr<const SlicePrep> prep = slice_prep_cache().find(key);
  if (prep == nullptr) {
    auto fresh = std::make_shared<SlicePrep>();
    fresh->key = std::move(key);
    // Spread over the threads (measured: running it in the calling thread was ~6 % slower on 2).
    // Each plane's number of taps first (quads are chosen by them), the tap offsets after.
    std::vector<tropfx::SliceTaps>& taps = fresh->taps;
    taps.resize(O);
    at::parallel_for(0, O, 8, [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o)
        for (int64_t p = 0; p < P; ++p) {
          int64_t n = 0;
          for (int64_t q = 0; q < kh * kw; ++q)
            for (int64_t w = 0; w < Cw; ++w) n += __builtin_popcountll(word(o, q / kw, q % kw, p, w));
          taps[o].real.push_back(n);
        }
    });
    // Channels counted four at a time where that reads fewer taps (single-plane weights only).
    std::vector<tropfx::SliceQuad> candidates(P == 1 ? O / 4 : 0);
    at::parallel_for(0, int64_t(candidates.size()), 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) candidates[i] = choose_quad(word, taps, tp, s, i * 4);
    });
    fresh->quad_at.assign(O, -1);
    for (tropfx::SliceQuad& quad : candidates)
      if (quad.width > 0) {
        fresh->quad_at[quad.o0] = int(fresh->quads.size());
        fresh->quads.push_back(std::move(quad));
      }
    at::parallel_for(0, O, 8, [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o)
        if (fresh->quad_at[o / 4 * 4] < 0) single_taps(word, s, o, taps[o]);  // else in its quad
    });
    slice_prep_cache().add(fresh);
    prep = std::move(fresh);
  }
  const std::vector<tropfx::SliceTaps>& taps = prep->taps;
  const std::vector<tropfx::SliceQuad>& quads = prep->quads;
  const std::vector<int>& quad_at = prep->quad_at;
  std::vector<int> shift(P);
  std::unique_ptr<bool[]> negative(new bool[P]);
  for (int64_t p = 0; p < P; ++p) {
    shift[p] = int(p < Pp ? p : p - Pp);
    negative[p] = p >= Pp;
  }
  // Not cleared between calls: the kernels write every word they read. Aligned to a cache line:
  // the planes start on whole vectors (SliceGeometry::Ps).
  const Scratch planes_store(0, s.N * s.image);
  uint64_t* planes = planes_store.get();
  const uint64_t* xp = x.const_data_ptr<uint64_t>();
  at::parallel_for(0, s.N * g.Cw, 1, [&](int64_t t0, int64_t t1) {
    tropfx::slice_planes(xp, planes, s, t0, t1);
  });
  const Scratch sliced_store(1, s.N * ceil_div(O, 64) * 64 * s.Lq);
  uint64_t* sliced = sliced_store.get();
  const int64_t blocks = ceil_div(s.Lq, tropfx::kSliceBlock);
  at::parallel_for(0, s.N * blocks, 1, [&](int64_t t0, int64_t t1) {
    tropfx::slice_conv_blocks(planes, taps, quads, quad_at.data(), shift.data(),
                              negative.get(), int(P), tp, O, s, sliced, t0, t1);
  });
  uint64_t* op_ = out.mutable_data_ptr<uint64_t>();
  at::parallel_for(0, s.N * s.Ho, 4, [&](int64_t t0, int64_t t1) {
    tropfx::slice_unpack_rows(sliced, op_, s, ceil_div(O, 64), t0, t1);
  });
  return true;
}

Tensor bool_conv2d_cpu(const Tensor& x_, const Tensor& pos_, const Tensor& neg_, const Tensor& threshold_,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = "bool_conv2d";
  check_bits(x_, op, "x", 4);
  check_bits(pos_, op, "weight_pos", 5);
  check_bits(neg_, op, "weight_neg", 5);
  const int64_t O = pos_.size(0), kh = pos_.size(1), kw = pos_.size(2), Pp = pos_.size(3);
  const int64_t Pn = neg_.size(3), Cw = x_.size(3);
  TORCH_CHECK(pos_.size(4) == Cw && neg_.size(0) == O && neg_.size(1) == kh && neg_.size(2) == kw &&
                  neg_.size(4) == Cw,
              "tropfx::bool_conv2d: weight planes ", pos_.sizes(), " and ", neg_.sizes(),
              " must be (O, kh, kw, planes, Cw) with the Cw = ", Cw, " of x");
  TORCH_CHECK(Pp + Pn <= 62, "tropfx::bool_conv2d: too many weight planes");
  TORCH_CHECK(threshold_.device().is_cpu() && !at::isFloatingType(threshold_.scalar_type()) &&
                  threshold_.dim() == 1 &&
                  threshold_.size(0) == O,
              "tropfx::bool_conv2d: threshold must be an integer tensor (", O, "), got ",
              threshold_.scalar_type(), " ", threshold_.sizes());
  const Tensor x = x_.contiguous(), pos = pos_.contiguous(), neg = neg_.contiguous();
  const Tensor threshold = threshold_.to(at::kLong).contiguous();
  const auto g = bit_geometry(op, x, kh, kw, stride, padding, dilation);
  const int64_t Ow = ceil_div(O, 64);
  Tensor out = output_empty({g.N, g.Ho, g.Wo, Ow}, x.options());
  if (out.numel() == 0) return out;
  if (bool_conv2d_sliced(x, pos, neg, threshold, g, out)) return out;  // writes every word
  out.zero_();
  // Planes re-laid as (tiles, kh, kw, Cw, P, 2, kBoolChannels): positive planes first, each
  // word as its low and (shifted) high nibbles (see boolean.h, weight_word).
  const int P = int(Pp + Pn), OT = tropfx::kBoolChannels;
  const int64_t tiles = ceil_div(O, OT);
  std::vector<uint64_t> planes(tiles * kh * kw * Cw * P * 2 * OT, 0);
  const uint64_t* pp = pos.const_data_ptr<uint64_t>();
  const uint64_t* np = neg.const_data_ptr<uint64_t>();
  for (int64_t o = 0; o < O; ++o)
    for (int64_t q = 0; q < kh * kw; ++q)
      for (int64_t w = 0; w < Cw; ++w)
        for (int p = 0; p < P; ++p) {
          const uint64_t v = p < Pp ? pp[((o * kh * kw + q) * Pp + p) * Cw + w]
                                    : np[((o * kh * kw + q) * Pn + (p - Pp)) * Cw + w];
          uint64_t* dst = &planes[(((((o / OT) * kh * kw + q) * Cw + w) * P + p) * 2) * OT + o % OT];
          dst[0] = v & tropfx::kLowNibbles;
          dst[OT] = (v >> 4) & tropfx::kLowNibbles;
        }
  std::vector<int> shift(P);
  for (int p = 0; p < P; ++p) shift[p] = p < Pp ? p : int(p - Pp);
  const std::vector<uint64_t> padded = pad_bits(x, g, 0);
  const int64_t* tp = threshold.const_data_ptr<int64_t>();
  uint64_t* op_ = out.mutable_data_ptr<uint64_t>();
  at::parallel_for(0, g.N * g.Ho, 1, [&](int64_t t0, int64_t t1) {
    tropfx::bool_conv_rows(padded.data(), planes.data(), shift.data(), P, int(Pp), tp, O, g, op_, t0, t1);
  });
  return out;
}

Tensor bit_morph_cpu(const char* op, const Tensor& x_, const Tensor& se_, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation, bool erode) {
  check_bits(x_, op, "x", 4);
  TORCH_CHECK(se_.device().is_cpu() && se_.scalar_type() == at::kBool && se_.dim() == 3, "tropfx::",
              op, ": se must be a bool (C, kh, kw) CPU tensor, got ", se_.scalar_type(), " ", se_.sizes());
  const int64_t C = se_.size(0), K = se_.size(1) * se_.size(2), Cw = x_.size(3);
  TORCH_CHECK(ceil_div(C, 64) == Cw, "tropfx::", op, ": se has ", C, " channels, x ", Cw,
              " words per pixel");
  const Tensor x = x_.contiguous(), se = se_.contiguous();
  const auto g = bit_geometry(op, x, se.size(1), se.size(2), stride, padding, dilation);
  Tensor out = output_empty({g.N, g.Ho, g.Wo, Cw}, x.options());
  if (out.numel() == 0) return out;
  std::vector<uint64_t> masks(K * Cw, 0);
  const bool* sp = se.const_data_ptr<bool>();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t q = 0; q < K; ++q)
      if (sp[c * K + q]) masks[q * Cw + c / 64] |= uint64_t(1) << (c % 64);
  const uint64_t last = C % 64 == 0 ? ~uint64_t(0) : (uint64_t(1) << (C % 64)) - 1;
  const std::vector<uint64_t> padded = pad_bits(x, g, erode ? ~uint64_t(0) : 0);
  uint64_t* op_ = out.mutable_data_ptr<uint64_t>();
  at::parallel_for(0, g.N * g.Ho, 1, [&](int64_t t0, int64_t t1) {
    tropfx::bit_morph_rows(padded.data(), masks.data(), erode, last, g, op_, t0, t1);
  });
  return out;
}

Tensor binary_dilation2d_cpu(const Tensor& x, const Tensor& se, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation) {
  return bit_morph_cpu("binary_dilation2d", x, se, stride, padding, dilation, false);
}

Tensor binary_erosion2d_cpu(const Tensor& x, const Tensor& se, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation) {
  return bit_morph_cpu("binary_erosion2d", x, se, stride, padding, dilation, true);
}

// The output cache's limit (bytes; negative: unchanged) and emptying; returns its stats.
std::vector<int64_t> output_cache_op(int64_t limit, bool clear) {
  const OutputCache::Stats s = OutputCache::get().configure(limit, clear);
  return {s.limit, s.cached, s.blocks, s.hits, s.misses};
}

}  // namespace

TORCH_LIBRARY(tropfx, m) {
  // Max-plus product along the last dim: y[..., o] = max(max_k x[..., k] + weight[o, k], bias[o]);
  // min-plus (minplus=True) = -maxplus(-x, -weight, -bias). argmax (int32): the first maximal k,
  // -1 where the bias wins; empty when with_argmax is False.
  m.def("maxplus(Tensor x, Tensor weight, Tensor? bias, bool minplus=False, bool with_argmax=True)"
        " -> (Tensor, Tensor)");
  m.def("maxplus_backward(Tensor grad, Tensor argmax, SymInt in_features, bool has_bias,"
        " bool minplus) -> (Tensor, Tensor, Tensor)");
  // Sparse max-plus along dim: y[.., o, ..] = max(bias[o], max_j x[.., index[o, j], ..] + value[o, j]);
  // argmax: j, or -1 where the bias wins.
  m.def("sparse_maxplus(Tensor x, Tensor index, Tensor value, Tensor? bias, int dim=-1,"
        " bool minplus=False, bool with_argmax=True) -> (Tensor, Tensor)");
  m.def("sparse_maxplus_backward(Tensor grad, Tensor argmax, Tensor index, SymInt in_features,"
        " int dim, bool has_bias, bool minplus) -> (Tensor, Tensor, Tensor)");
  // Morphological dilation / erosion of (N, C, H, W) by a (C, kh, kw) or (O, C, kh, kw) SE, windows
  // as in max_pool2d; argmax: the window position (c * kh + ki) * kw + kj.
  m.def("dilation2d(Tensor x, Tensor weight, int[2] stride, int[2] padding, int[2] dilation,"
        " bool ceil_mode=False, bool with_argmax=True) -> (Tensor, Tensor)");
  m.def("erosion2d(Tensor x, Tensor weight, int[2] stride, int[2] padding, int[2] dilation,"
        " bool ceil_mode=False, bool with_argmax=True) -> (Tensor, Tensor)");
  m.def("dilation2d_backward(Tensor grad, Tensor argmax, SymInt[] input_size, SymInt[] weight_size,"
        " int[2] stride, int[2] padding, int[2] dilation) -> (Tensor, Tensor)");
  m.def("erosion2d_backward(Tensor grad, Tensor argmax, SymInt[] input_size, SymInt[] weight_size,"
        " int[2] stride, int[2] padding, int[2] dilation) -> (Tensor, Tensor)");
  // Bit packing: (N, C, H, W), nonzero = 1 -> (N, H, W, ceil(C / 64)) uint64, channel c at bit
  // c % 64 of word c / 64; and back.
  m.def("pack_bits(Tensor x) -> Tensor");
  m.def("unpack_bits(Tensor packed, SymInt channels, ScalarType? dtype=None) -> Tensor");
  // y = 1[conv2d(x, W) >= threshold], W = sum_b 2^b weight_pos[..., b, :] - sum_b 2^b weight_neg[..., b, :]
  // (bit planes (O, kh, kw, planes, Cw)); zero padding; packed in, packed out.
  m.def("bool_conv2d(Tensor x, Tensor weight_pos, Tensor weight_neg, Tensor threshold, int[2] stride,"
        " int[2] padding, int[2] dilation) -> Tensor");
  // Binary dilation (OR, padding 0) / erosion (AND, padding 1) by a per-channel bool SE (C, kh, kw).
  m.def("binary_dilation2d(Tensor x, Tensor se, int[2] stride, int[2] padding, int[2] dilation)"
        " -> Tensor");
  m.def("binary_erosion2d(Tensor x, Tensor se, int[2] stride, int[2] padding, int[2] dilation)"
        " -> Tensor");
}

// The cache of output buffers (output_cache.h): set its limit in bytes (-1: unchanged), empty it;
// returns [limit, cached bytes, cached blocks, hits, misses]. No tensors, so one kernel for every
// backend; apart from the operators' schemas above (which the CUDA emulation copies).
TORCH_LIBRARY_FRAGMENT(tropfx, m) {
  m.def("_output_cache(int limit=-1, bool clear=False) -> int[]", &output_cache_op);
}

TORCH_LIBRARY_IMPL(tropfx, CPU, m) {
  m.impl("maxplus", &maxplus_cpu);
  m.impl("maxplus_backward", &maxplus_backward_cpu);
  m.impl("sparse_maxplus", &sparse_maxplus_cpu);
  m.impl("sparse_maxplus_backward", &sparse_maxplus_backward_cpu);
  m.impl("dilation2d", &dilation2d_cpu);
  m.impl("erosion2d", &erosion2d_cpu);
  m.impl("dilation2d_backward", &dilation2d_backward_cpu);
  m.impl("erosion2d_backward", &erosion2d_backward_cpu);
  m.impl("pack_bits", &pack_bits_cpu);
  m.impl("unpack_bits", &unpack_bits_cpu);
  m.impl("bool_conv2d", &bool_conv2d_cpu);
  m.impl("binary_dilation2d", &binary_dilation2d_cpu);
  m.impl("binary_erosion2d", &binary_erosion2d_cpu);
}
