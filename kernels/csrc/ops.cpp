// The tropfx operators: their schemas (schemas.h, written once) registered as a library
// (TORCH_LIBRARY), and their CPU implementations <op>_cpu (TORCH_LIBRARY_IMPL): the contract's
// meta function (contract.h: argument checks, output sizes, shared with the CUDA binding), the
// index range checks, allocation and threading (at::parallel_for, OpenMP in torch's builds); the
// math is in the torch-free headers. Fake implementations, autograd formulas and pure-torch
// references: tropfx/kernels/ops.py and reference.py. One translation unit: torch's headers are the slow part of the build, and the
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
#include "contract.h"
#include "maxplus.h"
#include "morphology.h"
#include "output_cache.h"
#include "ranges.h"
#include "schemas.h"

namespace {

using at::Tensor;
using namespace tropfx::binding;  // ceil_div, arg, opt_arg, ptr
namespace ct = tropfx::contract;
constexpr const ct::Backend& kCPU = ct::kCPU;

void check_cpu(const Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "tropfx::", op, ": ", name, " is on ", t.device(),
              "; these are the CPU kernels");
}

// The values of an index tensor (contiguous, int32 or int64) against the contract's range: one
// vectorized min / max pass (ranges.h), split across threads for large tensors.
template <typename I>
void check_values(const char* op, const ct::Range& r, const Tensor& t) {
  const int64_t n = t.numel();
  if (n == 0) return;
  const I* p = t.const_data_ptr<I>();
  std::mutex mutex;
  tropfx::MinMax all{INT64_MAX, INT64_MIN};
  at::parallel_for(0, n, int64_t(1) << 18, [&](int64_t i0, int64_t i1) {
    const tropfx::MinMax m = tropfx::min_max(p + i0, i1 - i0);
    const std::lock_guard<std::mutex> lock(mutex);
    all = {std::min(all.min, m.min), std::max(all.max, m.max)};
  });
  ct::check_range(op, r, all.min, all.max);
}

// The argmax checks of the backward operators are folded into the loops of each backward's first
// pass (the grad_x kernels: an unsigned comparison that replaces the "bias won" test; a separate
// pass over argmax cost 16-33 % of the backward), which skip an entry out of range, so nothing is
// written out of bounds. Where one reported such an entry, raise_if_bad finds the extreme value and
// raises, naming it, before the second pass (grad_weight / grad_value), which trusts the argmax.
class ArgmaxCheck {
 public:
  void operator()(bool in_range) {
    if (!in_range) ok_.store(false, std::memory_order_relaxed);
  }
  void raise_if_bad(const char* op, const ct::Range& r, const Tensor& argmax) const {
    if (ok_.load()) return;
    check_values<int32_t>(op, r, argmax);
    TORCH_CHECK_INDEX(false, "tropfx::", op, ": argmax holds a value outside [", r.lo, ", ", r.hi,
                      ")");
  }

 private:
  std::atomic<bool> ok_{true};
};

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
  const char* op = "maxplus";
  check_cpu(x_, op, "x");
  check_cpu(weight_, op, "weight");
  if (bias_.has_value()) check_cpu(*bias_, op, "bias");
  const auto bias_arg = opt_arg(bias_);
  const ct::Dense m = ct::maxplus(kCPU, arg(x_), arg(weight_), ptr(bias_arg), with_argmax);
  const int64_t K = m.K, M = m.M, B = m.B;
  const Tensor bias = bias_.has_value() ? bias_->contiguous() : Tensor();
  const Tensor x = x_.contiguous(), w = weight_.contiguous();
  Tensor y = output_empty(m.y, x.options());
  Tensor arg = output_empty(m.argmax, x.options().dtype(at::kInt));
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
  const char* op = "maxplus_backward";
  check_cpu(grad_, op, "grad");
  check_cpu(arg_, op, "argmax");
  const ct::DenseBackward m = ct::maxplus_backward(kCPU, arg(grad_), arg(arg_), K, has_bias);
  const Tensor g = grad_.contiguous(), arg = arg_.contiguous();
  const int64_t M = m.M, B = m.B;
  Tensor gx = output_zeros(m.gx, g.options());
  Tensor gw = output_zeros(m.gw, g.options());
  Tensor gb = output_zeros(m.gb, g.options());
  if (B == 0 || M == 0) return {gx, gw, gb};
  ArgmaxCheck checked;  // the kernels write grad_x[.., argmax]
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "tropfx::maxplus_backward", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const int32_t* ap = arg.const_data_ptr<int32_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, 16, [&](int64_t r0, int64_t r1) {
      checked(tropfx::dense_backward_input(gp, ap, gxp, K, M, minplus, r0, r1));
    });
    checked.raise_if_bad(op, m.argmax, arg);  // the weight pass trusts the checked argmax
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
  check_cpu(x_, op, "x");
  check_cpu(index_, op, "index");
  check_cpu(value_, op, "value");
  if (bias_.has_value()) check_cpu(*bias_, op, "bias");
  const auto bias_arg = opt_arg(bias_);
  const ct::Sparse m = ct::sparse_maxplus(kCPU, arg(x_), arg(index_), arg(value_), ptr(bias_arg),
                                          dim, with_argmax);
  const int64_t out = m.out, k = m.k, in = m.in, outer = m.outer, inner = m.inner;
  const Tensor bias = bias_.has_value() ? bias_->contiguous() : Tensor();
  const Tensor x = x_.contiguous(), index = index_.contiguous(), value = value_.contiguous();
  check_values<int64_t>(op, m.index, index);
  Tensor y = output_empty(m.y, x.options());
  Tensor arg = output_empty(m.argmax, x.options().dtype(at::kInt));
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
  check_cpu(grad_, op, "grad");
  check_cpu(arg_, op, "argmax");
  check_cpu(index_, op, "index");
  const ct::SparseBackward m = ct::sparse_maxplus_backward(kCPU, arg(grad_), arg(arg_), arg(index_),
                                                           in, dim, has_bias);
  const int64_t out = m.out, k = m.k, outer = m.outer, inner = m.inner;
  const Tensor g = grad_.contiguous(), arg = arg_.contiguous(), index = index_.contiguous();
  // the kernels read index[o, argmax] and write grad_x[.., index[o, argmax], ..]: index (a
  // weight, small) is scanned here, argmax in the kernels' loops
  check_values<int64_t>(op, m.index, index);
  Tensor gx = output_zeros(m.gx, g.options());
  Tensor gv = output_zeros(m.gv, g.options());
  Tensor gb = output_zeros(m.gb, g.options());
  if (g.numel() == 0) return {gx, gv, gb};
  ArgmaxCheck checked;
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
          checked(tropfx::sparse_backward_input(gp, ap, ip, gxp, in, inner, out, k, minplus, b,
                                                b + 1, s0, s1));
      }
    });
    checked.raise_if_bad(op, m.argmax, arg);  // the value pass trusts the checked argmax
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

template <typename T, typename Meta>
tropfx::MorphArgs<T> morph_args(const Meta& m, bool erode) {
  const ct::Window& k = m.k;
  return {nullptr, nullptr, nullptr, nullptr, m.N, m.C, m.H, m.W, m.O, m.Ho, m.Wo,
          int(k.kh), int(k.kw), int(k.sh), int(k.sw), int(k.ph), int(k.pw), int(k.dh), int(k.dw),
          m.full, erode};
}

std::tuple<Tensor, Tensor> morph_cpu(const char* op, const Tensor& x_, const Tensor& w_,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, bool ceil_mode, bool with_argmax,
                                     bool erode) {
  check_cpu(x_, op, "x");
  check_cpu(w_, op, "weight");
  const ct::Morph m = ct::morph(kCPU, op, arg(x_), arg(w_), stride, padding, dilation, ceil_mode,
                                with_argmax);
  const ct::Window& k = m.k;
  const int64_t O = m.O, Ho = m.Ho;
  const bool full = m.full;
  const Tensor x = x_.contiguous(), w = w_.contiguous();
  Tensor y = output_empty(m.y, x.options());
  Tensor arg = output_empty(m.argmax, x.options().dtype(at::kInt));
  if (y.numel() == 0) return {y, arg};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tropfx::morphology", [&] {
    auto a = morph_args<scalar_t>(m, erode);
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
  check_cpu(grad_, op, "grad");
  check_cpu(arg_, op, "argmax");
  const ct::MorphBackward m = ct::morph_backward(kCPU, op, arg(grad_), arg(arg_), input_size,
                                                 weight_size, stride, padding, dilation);
  const Tensor g = grad_.contiguous(), arg = arg_.contiguous();
  Tensor gx = output_zeros(m.gx, g.options());
  Tensor gw = output_zeros(m.gw, g.options());
  const int64_t O = m.O;
  const bool full = m.full;
  if (g.numel() == 0) return {gx, gw};
  ArgmaxCheck checked;  // the kernels write grad_weight[.., argmax]
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "tropfx::morphology_backward", [&] {
    auto a = morph_args<scalar_t>(m, erode);
    a.arg = const_cast<int32_t*>(arg.const_data_ptr<int32_t>());
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    scalar_t* gwp = gw.mutable_data_ptr<scalar_t>();
    if (!full) {
      at::parallel_for(0, a.C, 1, [&](int64_t c0, int64_t c1) {
        checked(tropfx::morph_backward_channels(a, gp, gxp, gwp, c0, c1));
      });
    } else {
      at::parallel_for(0, a.N, 1, [&](int64_t n0, int64_t n1) {
        checked(tropfx::morph_backward_full_input(a, gp, gxp, n0, n1));
      });
      checked.raise_if_bad(op, m.argmax, arg);  // the weight pass trusts the checked argmax
      at::parallel_for(0, O, 1, [&](int64_t o0, int64_t o1) {
        tropfx::morph_backward_full_weight(a, gp, gwp, o0, o1);
      });
    }
  });
  checked.raise_if_bad(op, m.argmax, arg);
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
  check_cpu(x_, "pack_bits", "x");
  const ct::Sizes shape = ct::pack_bits(arg(x_));
  const bool half = x_.scalar_type() == at::kHalf || x_.scalar_type() == at::kBFloat16;
  const Tensor x = (half ? x_.to(at::kFloat) : x_).contiguous();  // nonzero is kept
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  Tensor out = output_empty(shape, x.options().dtype(at::kUInt64));
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
  check_cpu(packed_, "unpack_bits", "packed");
  const ct::Sizes shape = ct::unpack_bits(arg(packed_), C, dtype);
  const Tensor packed = packed_.contiguous();
  const int64_t N = packed.size(0), H = packed.size(1), W = packed.size(2), Cw = packed.size(3);
  const at::ScalarType want = dtype.value_or(at::kFloat);
  const bool half = want == at::kHalf || want == at::kBFloat16;
  Tensor out = output_empty(shape, packed.options().dtype(half ? at::kFloat : want));
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

tropfx::BitGeometry bit_geometry(const ct::Bits& b) {
  const ct::Window& k = b.k;
  tropfx::BitGeometry g{b.N, b.H, b.W, b.Cw, 0, 0, int(k.kh), int(k.kw),
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
  check_cpu(x_, op, "x");
  check_cpu(pos_, op, "weight_pos");
  check_cpu(neg_, op, "weight_neg");
  check_cpu(threshold_, op, "threshold");
  const ct::BoolConv m = ct::bool_conv2d(arg(x_), arg(pos_), arg(neg_), arg(threshold_), stride,
                                         padding, dilation);
  const int64_t O = m.O, kh = m.g.k.kh, kw = m.g.k.kw, Pp = m.Pp, Pn = m.Pn, Cw = m.g.Cw;
  const Tensor x = x_.contiguous(), pos = pos_.contiguous(), neg = neg_.contiguous();
  const Tensor threshold = threshold_.to(at::kLong).contiguous();
  const auto g = bit_geometry(m.g);
  Tensor out = output_empty(m.g.out, x.options());
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
  check_cpu(x_, op, "x");
  check_cpu(se_, op, "se");
  const ct::Bits b = ct::bit_morph(op, arg(x_), arg(se_), stride, padding, dilation);
  const int64_t C = se_.size(0), K = se_.size(1) * se_.size(2), Cw = b.Cw;
  const Tensor x = x_.contiguous(), se = se_.contiguous();
  const auto g = bit_geometry(b);
  Tensor out = output_empty(b.out, x.options());
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

// The build's floating-point state (ranges.h, fp_state): read back by tropfx.kernels.build_info().
std::vector<int64_t> fp_state_op() {
  int64_t s[4];
  tropfx::fp_state(s);
  return {s[0], s[1], s[2], s[3]};
}

// The output cache's limit (bytes; negative: unchanged) and emptying; returns its stats.
std::vector<int64_t> output_cache_op(int64_t limit, bool clear) {
  const OutputCache::Stats s = OutputCache::get().configure(limit, clear);
  return {s.limit, s.cached, s.blocks, s.hits, s.misses};
}

// ---------------------------------------------------------------------------------------------
// The contract's meta functions as operators (namespace tropfx_contract, Meta tensors in and out):
// what the bindings check and allocate, exposed so that a test compares it with the Python fakes
// (kernels/ops.py) on every operator. The CPU backend's contract (float32 and float64).

Tensor empty_like_meta(const ct::Sizes& sizes, const Tensor& like, at::ScalarType dtype) {
  return at::empty(sizes, like.options().dtype(dtype));
}

std::tuple<Tensor, Tensor> maxplus_meta(const Tensor& x, const Tensor& w,
                                        const std::optional<Tensor>& bias, bool, bool with_argmax) {
  const auto b = opt_arg(bias);
  const ct::Dense m = ct::maxplus(kCPU, arg(x), arg(w), ptr(b), with_argmax);
  return {empty_like_meta(m.y, x, x.scalar_type()), empty_like_meta(m.argmax, x, at::kInt)};
}

std::tuple<Tensor, Tensor, Tensor> maxplus_backward_meta(const Tensor& grad, const Tensor& argmax,
                                                         int64_t K, bool has_bias, bool) {
  const ct::DenseBackward m = ct::maxplus_backward(kCPU, arg(grad), arg(argmax), K, has_bias);
  const at::ScalarType t = grad.scalar_type();
  return {empty_like_meta(m.gx, grad, t), empty_like_meta(m.gw, grad, t),
          empty_like_meta(m.gb, grad, t)};
}

std::tuple<Tensor, Tensor> sparse_maxplus_meta(const Tensor& x, const Tensor& index,
                                               const Tensor& value, const std::optional<Tensor>& bias,
                                               int64_t dim, bool, bool with_argmax) {
  const auto b = opt_arg(bias);
  const ct::Sparse m = ct::sparse_maxplus(kCPU, arg(x), arg(index), arg(value), ptr(b), dim,
                                          with_argmax);
  return {empty_like_meta(m.y, x, x.scalar_type()), empty_like_meta(m.argmax, x, at::kInt)};
}

std::tuple<Tensor, Tensor, Tensor> sparse_maxplus_backward_meta(const Tensor& grad,
                                                                const Tensor& argmax,
                                                                const Tensor& index, int64_t in,
                                                                int64_t dim, bool has_bias, bool) {
  const ct::SparseBackward m = ct::sparse_maxplus_backward(kCPU, arg(grad), arg(argmax), arg(index),
                                                           in, dim, has_bias);
  const at::ScalarType t = grad.scalar_type();
  return {empty_like_meta(m.gx, grad, t), empty_like_meta(m.gv, grad, t),
          empty_like_meta(m.gb, grad, t)};
}

template <bool kErode>
std::tuple<Tensor, Tensor> morph_meta(const Tensor& x, const Tensor& w, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation,
                                      bool ceil_mode, bool with_argmax) {
  const ct::Morph m = ct::morph(kCPU, kErode ? "erosion2d" : "dilation2d", arg(x), arg(w), stride,
                                padding, dilation, ceil_mode, with_argmax);
  return {empty_like_meta(m.y, x, x.scalar_type()), empty_like_meta(m.argmax, x, at::kInt)};
}

template <bool kErode>
std::tuple<Tensor, Tensor> morph_backward_meta(const Tensor& grad, const Tensor& argmax,
                                               at::IntArrayRef input_size,
                                               at::IntArrayRef weight_size, at::IntArrayRef stride,
                                               at::IntArrayRef padding, at::IntArrayRef dilation) {
  const ct::MorphBackward m =
      ct::morph_backward(kCPU, kErode ? "erosion2d_backward" : "dilation2d_backward", arg(grad),
                         arg(argmax), input_size, weight_size, stride, padding, dilation);
  return {empty_like_meta(m.gx, grad, grad.scalar_type()),
          empty_like_meta(m.gw, grad, grad.scalar_type())};
}

Tensor pack_bits_meta(const Tensor& x) {
  return empty_like_meta(ct::pack_bits(arg(x)), x, at::kUInt64);
}

Tensor unpack_bits_meta(const Tensor& packed, int64_t C, std::optional<at::ScalarType> dtype) {
  return empty_like_meta(ct::unpack_bits(arg(packed), C, dtype), packed,
                         dtype.value_or(at::kFloat));
}

Tensor bool_conv2d_meta(const Tensor& x, const Tensor& pos, const Tensor& neg,
                        const Tensor& threshold, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation) {
  const ct::BoolConv m = ct::bool_conv2d(arg(x), arg(pos), arg(neg), arg(threshold), stride,
                                         padding, dilation);
  return empty_like_meta(m.g.out, x, at::kUInt64);
}

template <bool kErode>
Tensor bit_morph_meta(const Tensor& x, const Tensor& se, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation) {
  const ct::Bits b = ct::bit_morph(kErode ? "binary_erosion2d" : "binary_dilation2d", arg(x),
                                   arg(se), stride, padding, dilation);
  return empty_like_meta(b.out, x, at::kUInt64);
}

}  // namespace

TORCH_LIBRARY(tropfx, m) {
  for (const char* schema : tropfx::kSchemas) m.def(schema);  // schemas.h
}

// The cache of output buffers (output_cache.h): set its limit in bytes (-1: unchanged), empty it;
// returns [limit, cached bytes, cached blocks, hits, misses]. No tensors, so one kernel for every
// backend; not one of the operators of schemas.h (which the CUDA emulation registers too).
TORCH_LIBRARY_FRAGMENT(tropfx, m) {
  m.def("_output_cache(int limit=-1, bool clear=False) -> int[]", &output_cache_op);
  // [fast-math, finite-math-only, flush-to-zero, denormals-are-zero] of the kernels' build
  m.def("_fp_state() -> int[]", &fp_state_op);
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

TORCH_LIBRARY(tropfx_contract, m) {
  for (const char* schema : tropfx::kSchemas) m.def(schema);
}

TORCH_LIBRARY_IMPL(tropfx_contract, Meta, m) {
  m.impl("maxplus", &maxplus_meta);
  m.impl("maxplus_backward", &maxplus_backward_meta);
  m.impl("sparse_maxplus", &sparse_maxplus_meta);
  m.impl("sparse_maxplus_backward", &sparse_maxplus_backward_meta);
  m.impl("dilation2d", &morph_meta<false>);
  m.impl("erosion2d", &morph_meta<true>);
  m.impl("dilation2d_backward", &morph_backward_meta<false>);
  m.impl("erosion2d_backward", &morph_backward_meta<true>);
  m.impl("pack_bits", &pack_bits_meta);
  m.impl("unpack_bits", &unpack_bits_meta);
  m.impl("bool_conv2d", &bool_conv2d_meta);
  m.impl("binary_dilation2d", &bit_morph_meta<false>);
  m.impl("binary_erosion2d", &bit_morph_meta<true>);
}
