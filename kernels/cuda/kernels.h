// Host API of tropfx's hand-written CUDA kernels: float32 on raw device pointers, launched on the
// caller's stream. Torch-free (STYLE.md, point 6): the torch binding (ops_cuda.cpp) checks and
// allocates, these functions only launch. Each returns the launch status (cudaGetLastError);
// errors inside a kernel surface, as usual, at the next synchronizing call.
//
// Semantics are the CPU kernels' (kernels/csrc/maxplus.h, morphology.h, boolean.h) and so the
// pure-torch references' (tropfx.nn.functional, tropfx.nn.morphology), bit for bit in the
// forward passes (NaN payloads aside: a NaN made on the GPU is the canonical one). The backward
// passes scatter with atomicAdd, so sums of several contributions to one entry may round
// differently from the CPU's ordered sums.
//
// Outputs: every forward writes each output element (and argmax, when asked); backward outputs
// must be zero-filled by the caller (they are accumulated into).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace tropfx {
namespace cuda {

// ------------------------------------------------------------------------------------------------
// Dense max-plus (min-plus): y[b, o] = max(max_k x[b, k] + w[o, k], bias[o]); argmax: the first
// maximal k, or -1 when the bias wins (it wins ties; a NaN bias never wins). Min-plus is computed
// as -maxplus(-x, -w, -bias).
struct DenseArgs {
  const float* x;     // (B, K)
  const float* w;     // (M, K)
  const float* bias;  // (M) or nullptr
  float* y;           // (B, M)
  int32_t* arg;       // (B, M) or nullptr
  int64_t B, K, M;
  bool minplus;
};

// With argmax, K is at most kMaxplusArgmaxInputs (cudaErrorInvalidValue otherwise).
constexpr int64_t kMaxplusArgmaxInputs = int64_t(1) << 21;

cudaError_t maxplus_forward(const DenseArgs& a, cudaStream_t stream);

// grad_x (B, K), grad_w (M, K), grad_bias (M) or nullptr: zero-filled by the caller.
cudaError_t maxplus_backward(const float* grad, const int32_t* arg, float* grad_x, float* grad_w,
                             float* grad_bias, int64_t B, int64_t K, int64_t M, bool minplus,
                             cudaStream_t stream);

// ------------------------------------------------------------------------------------------------
// Sparse max-plus along the middle dim of x viewed as (outer, in, inner):
// y[n, o, s] = max(bias[o], max_j x[n, index[o, j], s] + value[o, j]); the bias comes first (it wins
// ties, a NaN bias is the result); argmax j, or -1 for the bias.
struct SparseArgs {
  const float* x;         // (outer, in, inner)
  const int64_t* index;   // (out, k), entries in [0, in): checked on the device (a trap)
  const float* value;     // (out, k)
  const float* bias;      // (out) or nullptr
  float* y;               // (outer, out, inner)
  int32_t* arg;           // (outer, out, inner) or nullptr
  int64_t outer, in, inner, out, k;
  bool minplus;
};

cudaError_t sparse_maxplus_forward(const SparseArgs& a, cudaStream_t stream);

// grad_x (outer, in, inner), grad_value (out, k), grad_bias (out) or nullptr: zero-filled.
cudaError_t sparse_maxplus_backward(const float* grad, const int32_t* arg, const int64_t* index,
                                    float* grad_x, float* grad_value, float* grad_bias,
                                    int64_t outer, int64_t in, int64_t inner, int64_t out,
                                    int64_t k, bool minplus, cudaStream_t stream);

// ------------------------------------------------------------------------------------------------
// Morphological dilation (max of x + w, padding -inf) / erosion (min of x - w, padding +inf) of
// (N, C, H, W) by a per-channel (C, kh, kw) or full (O, C, kh, kw) structuring element; windows
// as in max_pool2d (Ho, Wo given: ceil_mode is the caller's). argmax: the window position
// (c * kh + ki) * kw + kj (c = 0 per channel), the first extreme one in that order.
struct MorphArgs {
  const float* x;  // (N, C, H, W)
  const float* w;  // (C, kh, kw) or (O, C, kh, kw)
  float* y;        // (N, O, Ho, Wo)
  int32_t* arg;    // (N, O, Ho, Wo) or nullptr
  int64_t N, C, H, W, O, Ho, Wo;
  int kh, kw, sh, sw, ph, pw, dh, dw;
  bool full, erode;
};

cudaError_t morph_forward(const MorphArgs& a, cudaStream_t stream);

// a.x, a.w, a.y are unused; a.arg is the forward's argmax. grad_x (N, C, H, W) and grad_w (the
// SE's shape): zero-filled. The gradient of a padding position is dropped, its SE entry keeps it.
cudaError_t morph_backward(const MorphArgs& a, const float* grad, float* grad_x, float* grad_w,
                           cudaStream_t stream);

// ------------------------------------------------------------------------------------------------
// Bit-packed boolean tensors: (N, C, H, W) {0, 1} <-> (N, H, W, Cw) uint64 words, Cw = ceil(C / 64),
// channel c at bit c % 64 of word c / 64, bits past C zero.

struct BitGeometry {
  int64_t N, H, W, Cw;  // input (packed)
  int64_t Ho, Wo;
  int kh, kw, sh, sw, ph, pw, dh, dw;
};

// x: (N, C, H, W) elements of elem_bytes (1, 2, 4 or 8) bytes; an element is 1 when its bits are
// nonzero, the sign bit ignored for floating types (so -0.0 is 0 and NaN is 1, as ``x != 0``).
// out: (N, H, W, Cw), fully written.
cudaError_t pack_bits(const void* x, int elem_bytes, bool floating, uint64_t* out, int64_t N,
                      int64_t C, int64_t H, int64_t W, cudaStream_t stream);

// out: (N, C, H, W) elements of elem_bytes bytes, ``one`` (the bit pattern of 1 in the output
// dtype, in the low elem_bytes bytes) or 0.
cudaError_t unpack_bits(const uint64_t* packed, void* out, int elem_bytes, uint64_t one, int64_t N,
                        int64_t C, int64_t H, int64_t W, cudaStream_t stream);

// y[n, o] = 1[ sum_b 2^b (popcount(x & pos_b) - popcount(x & neg_b)) over the window >= threshold[o] ],
// zero padding. pos: (O, kh, kw, Pp, Cw), neg: (O, kh, kw, Pn, Cw), threshold: (O) int64.
// out: (N, Ho, Wo, ceil(O / 64)), fully written (bits past O zero).
cudaError_t bool_conv2d(const uint64_t* x, const uint64_t* pos, int Pp, const uint64_t* neg, int Pn,
                        const int64_t* threshold, int64_t O, const BitGeometry& g, uint64_t* out,
                        cudaStream_t stream);

// Binary dilation (OR over the SE, padding 0) / erosion (AND, padding 1) by a per-channel bool SE
// (C, kh, kw) given as bytes (0 / nonzero). masks: a workspace of kh * kw * Cw words. out:
// (N, Ho, Wo, Cw), fully written.
cudaError_t binary_morph2d(const uint64_t* x, const uint8_t* se, int64_t C, bool erode,
                           const BitGeometry& g, uint64_t* masks, uint64_t* out,
                           cudaStream_t stream);

}  // namespace cuda
}  // namespace tropfx
