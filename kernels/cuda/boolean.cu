// Bit-packed boolean operators on the GPU: pack / unpack, boolean convolution (AND + popcount) and
// binary dilation / erosion (OR / AND of shifted words). Semantics: kernels.h and the CPU kernels
// in ../csrc/boolean.h; everything here is exact integer arithmetic.
//
// Boolean convolution: one thread per (output pixel, output word of 64 channels). The weight bit
// planes of the block's output word are staged in shared memory, [kh * kw * Cw][plane][64] in
// chunks, so that all threads read the same address (a broadcast) for each input word; a thread
// keeps its 64 counters in registers and reads each input word of its window once. Padding
// contributes nothing (a padded word is 0), so windows skip it. Counters are int32 when the sum is
// bounded below 2^31, else int64.
#include <type_traits>

#include "common.cuh"

namespace tropfx {
namespace cuda {
namespace {

// ------------------------------------------------------------------------------------------------
// pack / unpack

// U: the element's bits; an element is 1 when (bits & mask) != 0 (mask drops a float's sign bit).
template <typename U>
__global__ void __launch_bounds__(kThreads) pack_kernel(const U* __restrict__ x, U mask, uint64_t* __restrict__ out,
                                                       int64_t N, int64_t C, int64_t H, int64_t W) {
  const int64_t Cw = ceil_div<int64_t>(C, 64);
  const int64_t total = N * H * Cw * W;
  // Thread order (n, h, cw, w), w fastest: each of the 64 reads is coalesced along w.
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t w = e % W, cw = e / W % Cw, h = e / (W * Cw) % H, n = e / (W * Cw * H);
    const int64_t c0 = cw * 64, c1 = c0 + 64 < C ? c0 + 64 : C;
    const U* src = x + ((n * C + c0) * H + h) * W + w;
    uint64_t word = 0;
    for (int64_t c = c0; c < c1; ++c, src += H * W)
      if ((__ldg(src) & mask) != 0) word |= uint64_t(1) << (c - c0);
    out[((n * H + h) * W + w) * Cw + cw] = word;
  }
}

template <typename U>
__global__ void __launch_bounds__(kThreads) unpack_kernel(const uint64_t* __restrict__ packed, U one,
                                                         U* __restrict__ out, int64_t N, int64_t C,
                                                         int64_t H, int64_t W) {
  const int64_t Cw = ceil_div<int64_t>(C, 64);
  const int64_t total = N * C * H * W;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = e % (H * W), c = e / (H * W) % C, n = e / (H * W * C);
    const uint64_t word = __ldg(packed + (n * H * W + p) * Cw + c / 64);
    out[e] = (word >> (c % 64)) & 1u ? one : U(0);
  }
}

// ------------------------------------------------------------------------------------------------
// Boolean convolution

constexpr int kConvSmemBytes = 32 * 1024;  // staged weight words per chunk

// Thread: pixel (n, i, j) = blockIdx.x * blockDim.x + threadIdx.x, output channels
// oc0 .. oc0 + OC - 1 with oc0 = blockIdx.y * OC (OC = 64: a whole output word; OC = 16: a quarter,
// for more threads on small problems). The window's (q, w) pairs (kernel position, input word) are
// taken in chunks whose weight words ([pair][plane][OC]) fit in shared memory. Acc: int32_t or
// int64_t counters.
template <typename Acc, int OC>
__global__ void __launch_bounds__(kThreads) bool_conv_kernel(
    const uint64_t* __restrict__ x, const uint64_t* __restrict__ pos, int Pp,
    const uint64_t* __restrict__ neg, int Pn, const int64_t* __restrict__ threshold, int64_t O,
    const int64_t limit, const BitGeometry g, uint64_t* __restrict__ out) {
  static_assert(OC == 16 || OC == 64, "a quarter word or a word of output channels");
  using Bits = typename std::conditional<OC == 64, uint64_t, uint16_t>::type;
  __shared__ uint64_t ws[kConvSmemBytes / sizeof(uint64_t)];
  // Loop indices are 32-bit (the launcher checks K * Cw * P * OC < 2^31): a 64-bit division is a
  // call into a runtime routine, and the counters live across it would spill.
  const int P = Pp + Pn, K = g.kh * g.kw, Cw = int(g.Cw);
  const int64_t Ow = ceil_div<int64_t>(O, 64), oc0 = int64_t(blockIdx.y) * OC;
  // No planes: every sum is 0 (and there is nothing to stage).
  const int pairs = P > 0 ? K * Cw : 0;
  const int chunk = int(sizeof(ws) / sizeof(uint64_t)) / ((P > 0 ? P : 1) * OC);
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const bool valid = e < g.N * g.Ho * g.Wo;
  const int64_t j = e % g.Wo, i = e / g.Wo % g.Ho, n = e / (g.Wo * g.Ho);
  const int64_t h0 = i * g.sh - g.ph, x0 = j * g.sw - g.pw;
  const uint64_t* xn = x + n * g.H * g.W * Cw;
  // int32: the counters start at -threshold (clamped to +-limit, past which the comparison's
  // outcome is fixed), so the end compares with 0: loading 64 thresholds there, next to 64 live
  // counters, made ptxas spill. int64 (16 counters) compares at the end.
  constexpr bool kBiased = sizeof(Acc) == 4;
  Acc acc[OC];
#pragma unroll
  for (int u = 0; u < OC; ++u) {
    acc[u] = 0;
    if (kBiased && valid && oc0 + u < O) {
      const int64_t t = __ldg(threshold + oc0 + u);
      acc[u] = Acc(t > limit ? -limit : t < -limit ? limit : -t);
    }
  }
  for (int c0 = 0; c0 < pairs; c0 += chunk) {
    const int c1 = c0 + chunk < pairs ? c0 + chunk : pairs;
    __syncthreads();  // the previous chunk is consumed
    // ws[((pair - c0) * P + p) * OC + u] = plane p of output channel oc0 + u (0 past O), from
    // the (O, kh, kw, planes, Cw) layouts.
    for (int t = int(threadIdx.x); t < (c1 - c0) * P * OC; t += int(blockDim.x)) {
      const int u = t % OC, p = t / OC % P, pair = c0 + t / (OC * P), q = pair / Cw, w = pair % Cw;
      const int64_t o = oc0 + u;
      uint64_t word = 0;
      if (o < O)
        word = p < Pp ? __ldg(pos + ((o * K + q) * Pp + p) * Cw + w)
                      : __ldg(neg + ((o * K + q) * Pn + (p - Pp)) * Cw + w);
      ws[t] = word;
    }
    __syncthreads();
    if (!valid) continue;
    int q = c0 / Cw, w = c0 % Cw;  // the pair's kernel position and input word, stepped below
    for (int pair = c0; pair < c1; ++pair) {
      const int64_t h = h0 + int64_t(q / g.kw) * g.dh, x_ = x0 + int64_t(q % g.kw) * g.dw;
      const int wc = w;
      if (++w == Cw) w = 0, ++q;
      if (h < 0 || h >= g.H || x_ < 0 || x_ >= g.W) continue;  // zero padding adds nothing
      const uint64_t word = __ldg(xn + (h * g.W + x_) * Cw + wc);
      if (word == 0) continue;
      const uint64_t* wp = ws + (pair - c0) * P * OC;
      for (int p = 0; p < P; ++p, wp += OC) {
        // One unrolled loop for both signs (two made ptxas spill the int32 counters on sm_90).
        const bool positive = p < Pp;
        const int b = positive ? p : p - Pp;
#pragma unroll
        for (int u = 0; u < OC; ++u) {
          const Acc c = Acc(__popcll(word & wp[u])) << b;
          acc[u] = positive ? acc[u] + c : acc[u] - c;
        }
      }
    }
  }
  if (!valid) return;
  Bits bits = 0;
#pragma unroll
  for (int u = 0; u < OC; ++u) {
    const int64_t o = oc0 + u;
    if (o < O && (kBiased ? acc[u] >= 0 : int64_t(acc[u]) >= __ldg(threshold + o)))
      bits |= Bits(Bits(1) << u);
  }
  // Word ow = oc0 / 64 of pixel e; a quarter word is its (oc0 % 64) / 16-th 16 bits (little endian).
  reinterpret_cast<Bits*>(out + e * Ow + oc0 / 64)[oc0 % 64 / OC] = bits;
}

// ------------------------------------------------------------------------------------------------
// Binary dilation / erosion

__global__ void se_masks_kernel(const uint8_t* __restrict__ se, int64_t C, int K, int64_t Cw,
                                uint64_t* __restrict__ masks) {
  const int64_t total = int64_t(K) * Cw;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t q = e / Cw, cw = e % Cw;
    uint64_t m = 0;
    for (int64_t c = cw * 64; c < C && c < cw * 64 + 64; ++c)
      if (se[c * K + q] != 0) m |= uint64_t(1) << (c % 64);
    masks[e] = m;
  }
}

// Thread e = ((n * Ho + i) * Wo + j) * Cw + cw.
template <bool Erode>
__global__ void __launch_bounds__(kThreads) bit_morph_kernel(const uint64_t* __restrict__ x,
                                                            const uint64_t* __restrict__ masks,
                                                            uint64_t last, const BitGeometry g,
                                                            uint64_t* __restrict__ out) {
  const int K = g.kh * g.kw;
  const int64_t Cw = g.Cw, total = g.N * g.Ho * g.Wo * Cw;
  const uint64_t fill = Erode ? ~uint64_t(0) : 0;  // padding: AND's / OR's neutral element
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    // Each 64-bit division is a call whose clobbers made ptxas spill on sm_90: one per index,
    // remainders by multiplication.
    const int64_t t = e / Cw, cw = e - t * Cw;
    const int64_t r = t / g.Wo, j = t - r * g.Wo, n = r / g.Ho, i = r - n * g.Ho;
    uint64_t acc = fill;
    for (int q = 0; q < K; ++q) {
      const uint64_t m = __ldg(masks + int64_t(q) * Cw + cw);
      if (m == 0) continue;
      const int64_t h = i * g.sh - g.ph + int64_t(q / g.kw) * g.dh;
      const int64_t x_ = j * g.sw - g.pw + int64_t(q % g.kw) * g.dw;
      const bool inside = h >= 0 && h < g.H && x_ >= 0 && x_ < g.W;
      const uint64_t word = inside ? __ldg(x + ((n * g.H + h) * g.W + x_) * Cw + cw) : fill;
      if (Erode)
        acc &= word | ~m;
      else
        acc |= word & m;
    }
    out[e] = cw == Cw - 1 ? acc & last : acc;
  }
}

}  // namespace

cudaError_t pack_bits(const void* x, int elem_bytes, bool floating, uint64_t* out, int64_t N,
                      int64_t C, int64_t H, int64_t W, cudaStream_t stream) {
  const int64_t total = N * H * W * ceil_div<int64_t>(C, 64);
  if (total <= 0) return cudaSuccess;
  const unsigned grid = grid_for(total);
  switch (elem_bytes) {
    case 1:
      pack_kernel<uint8_t><<<grid, kThreads, 0, stream>>>(static_cast<const uint8_t*>(x),
                                                          uint8_t(0xffu), out, N, C, H, W);
      break;
    case 2:
      pack_kernel<uint16_t><<<grid, kThreads, 0, stream>>>(
          static_cast<const uint16_t*>(x), uint16_t(floating ? 0x7fffu : 0xffffu), out, N, C, H, W);
      break;
    case 4:
      pack_kernel<uint32_t><<<grid, kThreads, 0, stream>>>(
          static_cast<const uint32_t*>(x), floating ? 0x7fffffffu : 0xffffffffu, out, N, C, H, W);
      break;
    case 8:
      pack_kernel<uint64_t><<<grid, kThreads, 0, stream>>>(
          static_cast<const uint64_t*>(x), floating ? ~(uint64_t(1) << 63) : ~uint64_t(0), out, N, C,
          H, W);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t unpack_bits(const uint64_t* packed, void* out, int elem_bytes, uint64_t one, int64_t N,
                        int64_t C, int64_t H, int64_t W, cudaStream_t stream) {
  const int64_t total = N * C * H * W;
  if (total <= 0) return cudaSuccess;
  const unsigned grid = grid_for(total);
  switch (elem_bytes) {
    case 1:
      unpack_kernel<uint8_t><<<grid, kThreads, 0, stream>>>(packed, uint8_t(one),
                                                            static_cast<uint8_t*>(out), N, C, H, W);
      break;
    case 2:
      unpack_kernel<uint16_t><<<grid, kThreads, 0, stream>>>(packed, uint16_t(one),
                                                             static_cast<uint16_t*>(out), N, C, H, W);
      break;
    case 4:
      unpack_kernel<uint32_t><<<grid, kThreads, 0, stream>>>(packed, uint32_t(one),
                                                             static_cast<uint32_t*>(out), N, C, H, W);
      break;
    case 8:
      unpack_kernel<uint64_t><<<grid, kThreads, 0, stream>>>(packed, one, static_cast<uint64_t*>(out),
                                                             N, C, H, W);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t bool_conv2d(const uint64_t* x, const uint64_t* pos, int Pp, const uint64_t* neg, int Pn,
                        const int64_t* threshold, int64_t O, const BitGeometry& g, uint64_t* out,
                        cudaStream_t stream) {
  const int64_t pixels = g.N * g.Ho * g.Wo, Ow = ceil_div<int64_t>(O, 64);
  if (pixels <= 0 || O <= 0) return cudaSuccess;
  const int P = Pp + Pn;
  if (Pp < 0 || Pn < 0 || P > 62) return cudaErrorInvalidValue;
  if (g.Cw * g.kh * g.kw * P * 64 >= (int64_t(1) << 31)) return cudaErrorInvalidValue;
  const int64_t blocks = ceil_div<int64_t>(pixels, kThreads);
  // |sum| <= S = 64 * Cw * kh * kw * (2^max(Pp, Pn) - 1): int32 counters when S < 2^30, so that
  // sum - threshold, the threshold clamped to +-(S + 1), stays below 2^31 in magnitude.
  const int maxp = Pp > Pn ? Pp : Pn;
  const bool narrow = maxp < 30 && 64 * g.Cw * g.kh * g.kw < (int64_t(1) << (30 - maxp));
  const int64_t limit = narrow ? 64 * g.Cw * g.kh * g.kw * ((int64_t(1) << maxp) - 1) + 1 : 0;
  // Quarter words when whole words would leave SMs idle (few pixels, few output words), and always
  // with int64 counters: 64 of them would take 128 registers a thread, and spill.
  const bool quarter = !narrow || blocks * Ow < 2 * int64_t(device_sms());
  const int64_t parts = Ow * (quarter ? 4 : 1);
  if (parts > 65535 || blocks > int64_t(0x7fffffff)) return cudaErrorInvalidConfiguration;
  const dim3 grid{unsigned(blocks), unsigned(parts), 1u};
  auto kernel = narrow ? (quarter ? bool_conv_kernel<int32_t, 16> : bool_conv_kernel<int32_t, 64>)
                       : bool_conv_kernel<int64_t, 16>;
  kernel<<<grid, kThreads, 0, stream>>>(x, pos, Pp, neg, Pn, threshold, O, limit, g, out);
  return cudaGetLastError();
}

cudaError_t binary_morph2d(const uint64_t* x, const uint8_t* se, int64_t C, bool erode,
                           const BitGeometry& g, uint64_t* masks, uint64_t* out,
                           cudaStream_t stream) {
  const int K = g.kh * g.kw;
  if (g.Cw <= 0 || K <= 0) return cudaSuccess;
  se_masks_kernel<<<grid_for(K * g.Cw), kThreads, 0, stream>>>(se, C, K, g.Cw, masks);
  cudaError_t err = cudaGetLastError();
  const int64_t total = g.N * g.Ho * g.Wo * g.Cw;
  if (err != cudaSuccess || total <= 0) return err;
  const uint64_t last = C % 64 == 0 ? ~uint64_t(0) : (uint64_t(1) << (C % 64)) - 1;
  if (erode)
    bit_morph_kernel<true><<<grid_for(total), kThreads, 0, stream>>>(x, masks, last, g, out);
  else
    bit_morph_kernel<false><<<grid_for(total), kThreads, 0, stream>>>(x, masks, last, g, out);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace tropfx
