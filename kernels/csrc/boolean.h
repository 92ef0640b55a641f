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
// A {0,1} weight is one plane: 1 bit per weight. Two kernels compute it: at stride 1 with rows of
// at least ~40 output pixels, the bit-sliced one (SliceGeometry below: the input re-laid
// width-major, each plane's set bits counted with carry-save adders, 64 pixels per word);
// otherwise the channel-packed AND + popcount tiles (bool_conv_rows).
//
// Binary dilation / erosion by a per-channel SE S (C, kh, kw), windows as in the convolution:
//   dilation: y[c] = OR over s in S_c of x[c] shifted by s    (padding 0, OR's neutral element),
//   erosion:  y[c] = AND over s in S_c of x[c] shifted by s   (padding 1, AND's neutral element).
// With masks m_s (bit c set iff s in S_c): OR_s (x_s & m_s), AND_s (x_s | ~m_s), 64 channels per
// word operation. An empty S_c gives 0 (dilation) or 1 (erosion).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

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

// pack: rows (n, h) in [t0, t1) of x (N, C, H, W), nonzero = 1, into out (N, H, W, Cw); every word
// of those rows is written (the bits past C are 0).
// T: bool, uint8_t, int8_t, int16_t, int32_t, int64_t, float, double.
template <typename T>
void pack_bits_rows(const T* x, uint64_t* out, int64_t C, int64_t H, int64_t W, int64_t t0,
                    int64_t t1);

// unpack: rows (n, h) in [t0, t1) of packed (N, H, W, Cw) into out (N, C, H, W) as 0 / 1.
template <typename T>
void unpack_bits_rows(const uint64_t* packed, T* out, int64_t C, int64_t H, int64_t W,
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

// Bit-sliced boolean convolution, stride 1 (the fast path of bool_conv2d). The packed input is
// turned width-major: per image n, input channel c and column offset kj, a plane of rows of Wow
// words whose bit j of word w is the padded input at column w * 64 + j + kj * dw (Wow =
// ceil(Wo / 64) words per row). An output word (i, w) of channel o then sums, over the taps
// (c, ki, kj) with a weight bit set, the word (i + ki * dh, w) of plane (c, kj): 64 pixels per
// word, one vector of ``lanes`` words at a time, added into a bit-sliced counter with carry-save
// adders (Harley-Seal). No popcount instruction is involved.
//
// Rows are interleaved so that every tap loads one aligned vector: the lanes of a vector hold the
// rows v, v + S, .., v + (lanes - 1) S (S = ceil(Ho / lanes) row groups), so row offset ki * dh
// moves from vector (v, w) to vector (v + ki * dh, w), never across lanes. Output word (i, w) sits
// at ((i % S) * Wow + w) * lanes + i / S (slice_word); input plane row h (padded, 0 .. Hq) at
// every ((u * Wow + w) * lanes + l) with u + S l = h, u < U = S + (kh - 1) dh (some rows twice).
struct SliceGeometry {
  int64_t N, C, H, W, Cw;    // input (packed: N, H, W, Cw)
  int64_t Ho, Wo, Hq;        // output rows / columns, padded input rows
  int kh, kw, ph, pw, dh, dw;
  int64_t Wow;               // words per output row, ceil(Wo / 64)
  int64_t lanes;             // words per vector
  int64_t S, U;              // row groups of the output and of an input plane
  int64_t Lq;                // output words per (n, o) plane: S * Wow * lanes
  int64_t Ps;                // words per input plane: U * Wow * lanes
  int64_t image;             // words per image: (C * kw + 1) planes, the last one all zero
  int64_t zero;              // offset of the zero plane in an image (padding taps read it)
};

// Where output word (row i, word w) of a (n, o) plane sits (see SliceGeometry).
inline int64_t slice_word(const SliceGeometry& s, int64_t i, int64_t w) {
  return ((i % s.S) * s.Wow + w) * s.lanes + i / s.S;
}

// The offset in an image of planes of the word that tap (channel c, ki, kj) adds to output word 0.
inline int64_t slice_tap_offset(const SliceGeometry& s, int64_t c, int64_t ki, int64_t kj) {
  return (c * s.kw + kj) * s.Ps + ki * s.dh * s.Wow * s.lanes;
}

SliceGeometry slice_geometry(const BitGeometry& g, int64_t C);

// The width-major input planes of tasks t = n * Cw + cw in [t0, t1) (64 channels of one image),
// into ``planes`` (N, image words), every word of the planes of channels < C and the zero plane
// written.
void slice_planes(const uint64_t* x, uint64_t* planes, const SliceGeometry& s, int64_t t0,
                  int64_t t1);

// The weights of one output channel as the sliced kernel reads them: per weight plane p, tap
// offsets (into an image of planes) padded with zero-plane taps to a multiple of 16.
struct SliceTaps {
  std::vector<int32_t> offsets;  // all planes, one after the other (an image < 2^31 words)
  std::vector<int64_t> begin;    // plane p's taps: offsets[begin[p], begin[p + 1])
  std::vector<int64_t> real;     // plane p's taps before the zero-plane padding
};

// Whether the sliced count of ``real`` taps against threshold t (0 < t <= real) watches for an early
// exit: t in the outer quarters, a dilation-like (t small) or erosion-like (t large) neuron, whose
// lanes are all decided long before the last tap (see slice_threshold).
inline bool slice_exits_early(int64_t t, int64_t real) { return 4 * t <= real || 4 * t >= 3 * real; }

// Four output channels o0 .. o0 + 3 counted together (one nonnegative weight plane each, thresholds
// where no early exit applies). Their taps are grouped by which of the four read them: pattern m =
// 1 .. 15, bit k set if channel o0 + k does. Each group is counted once, and channel k's count is
// the sum of the counts of the 8 patterns with bit k, added bit-sliced (22 additions of a few bits
// for the four channels, through the partial sums over bits 0-1 and over bits 2-3, each as wide as
// its sum can be). The union of the four channels' taps is read once: for 50 %-dense weights 15/16
// of the taps against 4 x 1/2, 53 % of the carry-save work.
struct SliceQuad {
  int64_t o0;
  std::vector<int32_t> offsets;  // pattern m's taps: offsets[begin[m], begin[m + 1]), each group
  int64_t begin[17];             // padded with zero-plane taps to a multiple of 8 (pattern 0 empty)
  int64_t real[16];              // pattern m's taps before the padding
  int width;                     // planes of the widest pattern count (slice_width), 4 .. kQuadBits - 3
};
constexpr int kQuadBits = 16;  // planes of a channel's count in a quad: width + 3 at most

// y = [sum_p sign_p 2^shift_p count_p >= threshold], count_p the number of set taps of plane p.
// ``taps`` (O); ``quads``: the channels counted four at a time (the other three channels of a quad
// are skipped); ``quad_at[o]``: the quad that starts at channel o, or -1. ``negative[p]``: plane p is subtracted. Tasks t = n * blocks + b in [t0, t1), each a
// block of ``kSliceBlock`` output words of every channel; ``out`` (N, Opad, Lq), Opad = ceil(O /
// 64) * 64; the rows o >= O are written with zeros.
constexpr int64_t kSliceBlock = 8;
// Bits of the count of ``taps`` taps (padded to a multiple of 8) as slice_conv_blocks builds it:
// the caller takes the sliced path only if every plane's width + shift stays below 60.
inline int slice_width(int64_t taps) {
  const uint64_t sixteens = uint64_t(taps / 16);
  return 4 + (sixteens == 0 ? 0 : 64 - __builtin_clzll(sixteens));
}
void slice_conv_blocks(const uint64_t* planes, const std::vector<SliceTaps>& taps,
                       const std::vector<SliceQuad>& quads, const int* quad_at, const int* shift,
                       const bool* negative, int P, const int64_t* threshold, int64_t O,
                       const SliceGeometry& s, uint64_t* out, int64_t t0, int64_t t1);

// Back to the packed layout: output rows t = n * Ho + i in [t0, t1) of (N, Opad, Lq) into out (N,
// Ho, Wo, Ow).
void slice_unpack_rows(const uint64_t* sliced, uint64_t* out, const SliceGeometry& s, int64_t Ow,
                       int64_t t0, int64_t t1);

// Binary dilation (OR) or erosion (AND) of output rows t = n * Ho + i in [t0, t1). ``padded`` is
// padded with 0 (dilation) or all ones (erosion), word-major (N, Hq, Cw, Wq); ``masks``
// (kh * kw, Cw); ``last`` keeps the valid channel bits of the last word; out (N, Ho, Wo, Cw).
void bit_morph_rows(const uint64_t* padded, const uint64_t* masks, bool erode, uint64_t last,
                    const BitGeometry& g, uint64_t* out, int64_t t0, int64_t t1);

}  // namespace tropfx
