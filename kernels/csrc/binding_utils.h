// What the CPU binding (ops.cpp) and the CUDA binding (../cuda/ops_cuda.cpp) share besides the
// operators' contract (contract.h): tensors as the contract's arguments. Needs torch: only the
// bindings include it.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "contract.h"

namespace tropfx::binding {

using contract::ceil_div;

// A tensor as a contract argument (its sizes stay owned by the tensor).
inline contract::Arg arg(const at::Tensor& t) { return {t.sizes(), t.scalar_type()}; }

// An optional tensor as an optional contract argument: keep the returned optional alive while
// the pointer (opt_arg(...) ? &*... : nullptr) is used.
inline std::optional<contract::Arg> opt_arg(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return std::nullopt;
  return arg(*t);
}

inline const contract::Arg* ptr(const std::optional<contract::Arg>& a) {
  return a.has_value() ? &*a : nullptr;
}

}  // namespace tropfx::binding
