// The tropfx operators' schemas, written once. Included by the CPU library (ops.cpp:
// TORCH_LIBRARY(tropfx, m) and the debug namespace tropfx_contract) and by the CUDA emulator's
// library (kernels/cuda_build.py: TORCH_LIBRARY(tropfx_emu, m)), so that no schema is copied or
// extracted from C++ text. Torch-free: plain strings.
#pragma once

namespace tropfx {

inline constexpr const char* kSchemas[] = {
    // Max-plus product along the last dim: y[..., o] = max(max_k x[..., k] + weight[o, k], bias[o]);
    // min-plus (minplus=True) = -maxplus(-x, -weight, -bias). argmax (int32): the first maximal k,
    // -1 where the bias wins; empty when with_argmax is False.
    "maxplus(Tensor x, Tensor weight, Tensor? bias, bool minplus=False, bool with_argmax=True)"
    " -> (Tensor, Tensor)",
    // argmax in [-1, in_features): checked, an IndexError otherwise.
    "maxplus_backward(Tensor grad, Tensor argmax, SymInt in_features, bool has_bias,"
    " bool minplus) -> (Tensor, Tensor, Tensor)",
    // Sparse max-plus along dim: y[.., o, ..] = max(bias[o], max_j x[.., index[o, j], ..] + value[o, j]);
    // index in [0, x.size(dim)); argmax: j, or -1 where the bias wins.
    "sparse_maxplus(Tensor x, Tensor index, Tensor value, Tensor? bias, int dim=-1,"
    " bool minplus=False, bool with_argmax=True) -> (Tensor, Tensor)",
    // argmax in [-1, k), index in [0, in_features): checked.
    "sparse_maxplus_backward(Tensor grad, Tensor argmax, Tensor index, SymInt in_features,"
    " int dim, bool has_bias, bool minplus) -> (Tensor, Tensor, Tensor)",
    // Morphological dilation / erosion of (N, C, H, W) by a (C, kh, kw) or (O, C, kh, kw) SE, windows
    // as in max_pool2d; argmax: the window position (c * kh + ki) * kw + kj.
    "dilation2d(Tensor x, Tensor weight, int[2] stride, int[2] padding, int[2] dilation,"
    " bool ceil_mode=False, bool with_argmax=True) -> (Tensor, Tensor)",
    "erosion2d(Tensor x, Tensor weight, int[2] stride, int[2] padding, int[2] dilation,"
    " bool ceil_mode=False, bool with_argmax=True) -> (Tensor, Tensor)",
    // argmax in [0, kh * kw) (per channel) or [0, C * kh * kw) (full SE): checked.
    "dilation2d_backward(Tensor grad, Tensor argmax, SymInt[] input_size, SymInt[] weight_size,"
    " int[2] stride, int[2] padding, int[2] dilation) -> (Tensor, Tensor)",
    "erosion2d_backward(Tensor grad, Tensor argmax, SymInt[] input_size, SymInt[] weight_size,"
    " int[2] stride, int[2] padding, int[2] dilation) -> (Tensor, Tensor)",
    // Bit packing: (N, C, H, W), nonzero = 1 -> (N, H, W, ceil(C / 64)) uint64, channel c at bit
    // c % 64 of word c / 64; and back.
    "pack_bits(Tensor x) -> Tensor",
    "unpack_bits(Tensor packed, SymInt channels, ScalarType? dtype=None) -> Tensor",
    // y = 1[conv2d(x, W) >= threshold], W = sum_b 2^b weight_pos[..., b, :] - sum_b 2^b weight_neg[..., b, :]
    // (bit planes (O, kh, kw, planes, Cw)); zero padding; packed in, packed out.
    "bool_conv2d(Tensor x, Tensor weight_pos, Tensor weight_neg, Tensor threshold, int[2] stride,"
    " int[2] padding, int[2] dilation) -> Tensor",
    // Binary dilation (OR, padding 0) / erosion (AND, padding 1) by a per-channel bool SE (C, kh, kw).
    "binary_dilation2d(Tensor x, Tensor se, int[2] stride, int[2] padding, int[2] dilation)"
    " -> Tensor",
    "binary_erosion2d(Tensor x, Tensor se, int[2] stride, int[2] padding, int[2] dilation)"
    " -> Tensor",
};

}  // namespace tropfx
