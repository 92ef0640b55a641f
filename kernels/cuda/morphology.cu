// Morphological dilation / erosion 2d on the GPU, float32, forward and backward.
//
// Semantics (kernels.h; the CPU kernel in ../csrc/morphology.h): windows as in max_pool2d;
// dilation: y = max over the window of x + w, padding -inf; erosion: y = min over the window of
// x - w, padding +inf. The padding value goes through the same arithmetic as an input (so an SE
// entry of +inf meets it as on the CPU). The scan runs in window order (input channel, then kernel
// row-major) with torch's rule: the first extreme element wins, the first NaN wins and stops it.
//
// Forward: one thread per output (per channel), or per output position and 4 output channels (full
// SE: each input read serves 4 channels), consecutive threads along the output row; windows are
// read through L1. Backward: one block per (sample, output channel) plane and chunk of positions,
// atomicAdd into grad_x, and the SE gradient summed in shared memory first (a plane reuses the
// same few SE entries over and over), then added to grad_w once per block.
#include "common.cuh"

namespace tropfx {
namespace cuda {
namespace {

constexpr int kFullChannels = 4;       // output channels per thread, full SE
constexpr int kBackwardItems = 4096;   // output positions per backward block
constexpr int kSmemWeights = 8192;     // SE entries summed in shared memory (32 KiB)

template <bool Erode>
__device__ __forceinline__ float morph_term(float x, float w) {
  return Erode ? x - w : x + w;
}

template <bool Erode>
__device__ __forceinline__ void morph_step(float v, int32_t q, float& best, int32_t& arg) {
  if (Erode)
    min_step(v, q, best, arg);
  else
    max_step(v, q, best, arg);
}

// Per-channel SE: thread e = ((n * C + c) * Ho + i) * Wo + j.
template <bool Erode>
__global__ void __launch_bounds__(kThreads) morph_channels_kernel(const MorphArgs a) {
  const float fill = Erode ? pos_inf() : neg_inf();
  const int K = a.kh * a.kw;
  const int64_t total = a.N * a.C * a.Ho * a.Wo;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = e % a.Wo, i = e / a.Wo % a.Ho, plane = e / (a.Wo * a.Ho);
    const int64_t c = plane % a.C;
    const float* xp = a.x + plane * a.H * a.W;
    const float* w = a.w + c * K;
    float best = fill;
    int32_t arg = 0;
    for (int ki = 0; ki < a.kh; ++ki) {
      const int64_t h = i * a.sh - a.ph + int64_t(ki) * a.dh;
      const bool row_in = h >= 0 && h < a.H;
      for (int kj = 0; kj < a.kw; ++kj) {
        const int64_t x = j * a.sw - a.pw + int64_t(kj) * a.dw;
        const float v = row_in && x >= 0 && x < a.W ? __ldg(xp + h * a.W + x) : fill;
        const int q = ki * a.kw + kj;
        morph_step<Erode>(morph_term<Erode>(v, __ldg(w + q)), q, best, arg);
      }
    }
    a.y[e] = best;
    if (a.arg != nullptr) a.arg[e] = arg;
  }
}

// Full SE: thread e = ((n * tiles + tile) * Ho + i) * Wo + j computes output channels
// tile * 4 .. tile * 4 + 3; window position t = (c * kh + ki) * kw + kj.
template <bool Erode>
__global__ void __launch_bounds__(kThreads) morph_full_kernel(const MorphArgs a) {
  constexpr int OT = kFullChannels;
  const float fill = Erode ? pos_inf() : neg_inf();
  const int K = a.kh * a.kw;
  const int64_t tiles = ceil_div<int64_t>(a.O, OT);
  const int64_t total = a.N * tiles * a.Ho * a.Wo, per_o = a.C * K;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = e % a.Wo, i = e / a.Wo % a.Ho, t = e / (a.Wo * a.Ho);
    const int64_t tile = t % tiles, n = t / tiles, o0 = tile * OT;
    const float* w[OT];
#pragma unroll
    for (int u = 0; u < OT; ++u) w[u] = a.w + (o0 + u < a.O ? o0 + u : a.O - 1) * per_o;
    float best[OT];
    int32_t arg[OT];
#pragma unroll
    for (int u = 0; u < OT; ++u) best[u] = fill, arg[u] = 0;
    for (int64_t c = 0; c < a.C; ++c) {
      const float* xp = a.x + (n * a.C + c) * a.H * a.W;
      for (int ki = 0; ki < a.kh; ++ki) {
        const int64_t h = i * a.sh - a.ph + int64_t(ki) * a.dh;
        const bool row_in = h >= 0 && h < a.H;
        for (int kj = 0; kj < a.kw; ++kj) {
          const int64_t x = j * a.sw - a.pw + int64_t(kj) * a.dw;
          const float v = row_in && x >= 0 && x < a.W ? __ldg(xp + h * a.W + x) : fill;
          const int32_t q = int32_t(c * K + ki * a.kw + kj);
#pragma unroll
          for (int u = 0; u < OT; ++u) morph_step<Erode>(morph_term<Erode>(v, __ldg(w[u] + q)), q, best[u], arg[u]);
        }
      }
    }
    const int64_t plane = a.Ho * a.Wo, at = (n * a.O + o0) * plane + i * a.Wo + j;
#pragma unroll
    for (int u = 0; u < OT; ++u) {
      if (o0 + u >= a.O) break;
      a.y[at + u * plane] = best[u];
      if (a.arg != nullptr) a.arg[at + u * plane] = arg[u];
    }
  }
}

// Backward: block (plane = n * O + o, chunk of kBackwardItems positions). SmemW: the plane's SE
// slice (per_o = K or C * K entries) is summed in shared memory.
template <bool SmemW>
__global__ void __launch_bounds__(kThreads) morph_backward_kernel(const MorphArgs a, const float* __restrict__ g,
                                                                 float* __restrict__ gx,
                                                                 float* __restrict__ gw) {
  extern __shared__ float sgw[];
  const int K = a.kh * a.kw;
  const int64_t per_o = a.full ? a.C * K : K;
  const int64_t plane = blockIdx.x, n = plane / a.O, o = plane % a.O;
  const int64_t positions = a.Ho * a.Wo;
  const int64_t p0 = int64_t(blockIdx.y) * kBackwardItems;
  const int64_t p1 = p0 + kBackwardItems < positions ? p0 + kBackwardItems : positions;
  float* gwo = gw + o * per_o;  // per channel: o is the channel
  if constexpr (SmemW) {
    for (int64_t t = threadIdx.x; t < per_o; t += blockDim.x) sgw[t] = 0.f;
    __syncthreads();
  }
  for (int64_t p = p0 + threadIdx.x; p < p1; p += blockDim.x) {
    const int64_t e = plane * positions + p;
    const int32_t t = a.arg[e];
    if (t < 0 || t >= per_o) continue;  // not an argmax of this op
    const float v = g[e];
    const int64_t c = a.full ? t / K : o;
    const int q = a.full ? int(t % K) : int(t);
    const int64_t i = p / a.Wo, j = p % a.Wo;
    const int64_t h = i * a.sh + int64_t(q / a.kw) * a.dh - a.ph;
    const int64_t x = j * a.sw + int64_t(q % a.kw) * a.dw - a.pw;
    if (h >= 0 && h < a.H && x >= 0 && x < a.W) atomicAdd(gx + ((n * a.C + c) * a.H + h) * a.W + x, v);
    const float dv = a.erode ? -v : v;  // erosion: y = x - w
    if constexpr (SmemW)
      atomicAdd(sgw + t, dv);
    else
      atomicAdd(gwo + t, dv);
  }
  if constexpr (SmemW) {
    __syncthreads();
    // Adding 0 changes nothing: grad_w starts at +0 and a sum never becomes -0 from there.
    for (int64_t t = threadIdx.x; t < per_o; t += blockDim.x)
      if (sgw[t] != 0.f) atomicAdd(gwo + t, sgw[t]);
  }
}

}  // namespace

cudaError_t morph_forward(const MorphArgs& a, cudaStream_t stream) {
  if (a.N <= 0 || a.O <= 0 || a.Ho <= 0 || a.Wo <= 0) return cudaSuccess;
  if (int64_t(a.C) * a.kh * a.kw > int64_t(0x7fffffff)) return cudaErrorInvalidValue;
  if (!a.full) {
    const int64_t total = a.N * a.C * a.Ho * a.Wo;
    if (a.erode)
      morph_channels_kernel<true><<<grid_for(total), kThreads, 0, stream>>>(a);
    else
      morph_channels_kernel<false><<<grid_for(total), kThreads, 0, stream>>>(a);
  } else {
    const int64_t total = a.N * ceil_div<int64_t>(a.O, kFullChannels) * a.Ho * a.Wo;
    if (a.erode)
      morph_full_kernel<true><<<grid_for(total), kThreads, 0, stream>>>(a);
    else
      morph_full_kernel<false><<<grid_for(total), kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

cudaError_t morph_backward(const MorphArgs& a, const float* grad, float* grad_x, float* grad_w,
                           cudaStream_t stream) {
  const int64_t planes = a.N * a.O, positions = a.Ho * a.Wo;
  if (planes <= 0 || positions <= 0) return cudaSuccess;
  const int64_t chunks = ceil_div<int64_t>(positions, kBackwardItems);
  if (planes > int64_t(0x7fffffff) || chunks > 65535) return cudaErrorInvalidConfiguration;
  const int64_t per_o = (a.full ? a.C : 1) * a.kh * a.kw;
  const dim3 grid{unsigned(planes), unsigned(chunks), 1u};
  if (per_o <= kSmemWeights)
    morph_backward_kernel<true><<<grid, kThreads, size_t(per_o) * sizeof(float), stream>>>(
        a, grad, grad_x, grad_w);
  else
    morph_backward_kernel<false><<<grid, kThreads, 0, stream>>>(a, grad, grad_x, grad_w);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace tropfx
