// Boolean convolution and binary dilation / erosion on bit-packed tensors. Torch-free.
//
// Layout: a {0,1} tensor (N, C, H, W) is packed channels-last into 64-bit words, (N, H, W, Cw)
// with Cw = ceil(C / 64): channel c is bit c % 64 of word c / 64; bits past C are 0.
//
// Boolean convolution: integer weights W (O, C, kh, kw) and thresholds t (O):
//   y[n, o, i, j] = 1[ sum_{c, ki, kj} W[o, c, ki, kj] x[n, c, i*sh + ki*dh - ph, j*sw + kj*dw - pw] >= t[o] ],
// zero padding (a padded input contributes nothing), as F.conv2d. W is split into bit planes of
// its positive and negative parts, W = sum_b 2^b P_b - sum_b 2^b N_b, each plane packed like x, so
// that the sum is sum_b 2^b (popcount(x & P_b) - popcount(x & N_b)) over words: AND + popcount.
// A {0,1} weight is one plane: 1 bit per weight.
//
// Binary dilation / erosion by a per-channel SE S (C, kh, kw), windows as in the convolution:
//   dilation: y[c] = OR over s in S_c of x[c] shifted by s    (padding 0, OR's neutral element),
//   erosion:  y[c] = AND over s in S_c of x[c] shifted by s   (padding 1, AND's neutral element).
// With masks m_s (bit c set iff s in S_c): OR_s (x_s & m_s), AND_s (x_s | ~m_s), 64 channels per
// word operation. An empty S_c gives 0 (dilation) or 1 (erosion).
#pragma once

#include <algorithm>
#include <cstdint>

namespace tropfx {

struct BitGeometry {
  int64_t N, H, W, Cw;  // input, packed
  int64_t Ho, Wo;
  int kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t Hq, Wq;  // the padded input, word-major: (N, Hq, Cw, Wq), room for whole tiles

  void finish() {
    Ho = (H + 2 * int64_t(ph) - int64_t(dh) * (kh - 1) - 1) / sh + 1;
    Wo = (W + 2 * int64_t(pw) - int64_t(dw) * (kw - 1) - 1) / sw + 1;
    Hq = H + 2 * int64_t(ph);
    const int64_t wo_round = (Wo + 7) / 8 * 8;
    Wq = std::max(W + 2 * int64_t(pw), (wo_round - 1) * sw + int64_t(dw) * (kw - 1) + 1);
  }
};

// Entry points (defined in boolean.cpp, a torch-free translation unit). Each works on a range of
// rows or planes; the caller splits ranges across threads.

// pack: rows (n, h) in [t0, t1) of x (N, C, H, W), nonzero = 1, into out (N, H, W, Cw), zero-filled.
// T: bool, uint8_t, int8_t, int16_t, int32_t, int64_t, float, double.
template <typename T>
void pack_bits_rows(const T* x, uint64_t* out, int64_t C, int64_t H, int64_t W, int64_t t0,
                    int64_t t1);

// unpack: planes (n, c) in [t0, t1) of packed (N, H, W, Cw) into out (N, C, H, W) as 0 / 1.
template <typename T>
void unpack_bits_planes(const uint64_t* packed, T* out, int64_t C, int64_t H, int64_t W,
                        int64_t Cw, int64_t t0, int64_t t1);

// Spatial padding of rows (n, r) in [t0, t1) of the padded input with ``fill`` words, transposed to
// the word-major layout (N, Hq, Cw, Wq): the words of neighbouring pixels are adjacent.
void pad_bits_rows(const uint64_t* x, uint64_t* padded, const BitGeometry& g, uint64_t fill,
                   int64_t t0, int64_t t1);

constexpr int kBoolChannels = 8;  // output channels per tile (the AVX2 tile names 8 accumulators)
constexpr uint64_t kLowNibbles = 0x0f0f0f0f0f0f0f0full;

// Boolean convolution of output rows t = n * Ho + i in [t0, t1). ``padded``: the zero-padded
// input (N, Hq, Cw, Wq); ``planes``: the weights as the kernel reads them, (tiles, kh, kw, Cw, P,
// 2, kBoolChannels) -- per tile of output channels, per term (ki, kj, word) and plane, the low
// nibbles of the channels' words, then their high nibbles shifted down (popcount(x & w) is
// lut[x & lo] + lut[(x >> 4) & hi] per byte, the nibbles of x split once per term); the first
// ``pos`` planes are positive, plane p weighs 2^shift[p]. ``out`` (N, Ho, Wo, Ow) is zero-filled.
void bool_conv_rows(const uint64_t* padded, const uint64_t* planes, const int* shift, int P, int pos,
                    const int64_t* threshold, int64_t O, const BitGeometry& g, uint64_t* out,
                    int64_t t0, int64_t t1);

// Binary dilation (OR) or erosion (AND) of output rows t = n * Ho + i in [t0, t1). ``padded`` is
// padded with 0 (dilation) or all ones (erosion), word-major (N, Hq, Cw, Wq); ``masks``
// (kh * kw, Cw); ``last`` keeps the valid channel bits of the last word; out (N, Ho, Wo, Cw).
void bit_morph_rows(const uint64_t* padded, const uint64_t* masks, bool erode, uint64_t last,
                    const BitGeometry& g, uint64_t* out, int64_t t0, int64_t t1);

}  // namespace tropfx
