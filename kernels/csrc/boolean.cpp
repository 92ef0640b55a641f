// The bit-packed boolean kernels (see boolean.h for the layouts and semantics). Torch-free.
#include "boolean.h"

#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace tropfx {

// Entry points: documented in boolean.h.

template <typename T>
void pack_bits_rows(const T* x, uint64_t* out, int64_t C, int64_t H, int64_t W, int64_t t0,
                    int64_t t1) {
  const int64_t Cw = (C + 63) / 64;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / H, h = t % H;
    uint64_t* o = out + t * W * Cw;
    for (int64_t c = 0; c < C; ++c) {
      const T* row = x + ((n * C + c) * H + h) * W;
      const int shift = int(c % 64);
      uint64_t* word = o + c / 64;
      for (int64_t w = 0; w < W; ++w) word[w * Cw] |= uint64_t(row[w] != T(0)) << shift;
    }
  }
}

template <typename T>
void unpack_bits_planes(const uint64_t* packed, T* out, int64_t C, int64_t H, int64_t W,
                        int64_t Cw, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / C, c = t % C;
    const uint64_t* src = packed + n * H * W * Cw + c / 64;
    const int shift = int(c % 64);
    T* o = out + t * H * W;
    for (int64_t p = 0; p < H * W; ++p) o[p] = T(float((src[p * Cw] >> shift) & 1u));
  }
}

void pad_bits_rows(const uint64_t* x, uint64_t* padded, const BitGeometry& g, uint64_t fill,
                          int64_t t0, int64_t t1) {
  const int64_t Wq = g.Wq, Cw = g.Cw;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / g.Hq, h = t % g.Hq - g.ph;
    uint64_t* d = padded + t * Cw * Wq;
    std::fill(d, d + Cw * Wq, fill);
    if (h < 0 || h >= g.H) continue;
    const uint64_t* s = x + (n * g.H + h) * g.W * Cw;
    for (int64_t w = 0; w < g.W; ++w)
      for (int64_t c = 0; c < Cw; ++c) d[c * Wq + g.pw + w] = s[w * Cw + c];
  }
}

namespace {

// A weight word from its nibbles (the layout of bool_conv_rows' planes).
inline uint64_t weight_word(const uint64_t* nibbles) {
  return nibbles[0] | (nibbles[kBoolChannels] << 4);
}

// The terms of a window, (ki, kj, word): where the input word of pixel 0 is in the padded rows of
// an output row, and where the tile's weight words are (plane 0).
struct BoolTerms {
  std::vector<int64_t> x, w;

  BoolTerms(const BitGeometry& g, int P) {
    for (int ki = 0; ki < g.kh; ++ki)
      for (int kj = 0; kj < g.kw; ++kj)
        for (int64_t c = 0; c < g.Cw; ++c) {
          x.push_back((int64_t(ki) * g.dh * g.Cw + c) * g.Wq + int64_t(kj) * g.dw);
          w.push_back((((int64_t(ki) * g.kw + kj) * g.Cw + c) * P) * 2 * kBoolChannels);
        }
  }
  int64_t size() const { return int64_t(x.size()); }
};

// Scalar tile: pixel j x kBoolChannels output channels; sums over planes and terms.
inline void bool_conv_tile_scalar(const uint64_t* rows, const uint64_t* wt, const BoolTerms& terms,
                                  const int* shift, int P, int pos, int64_t j, int64_t* sums) {
  constexpr int OT = kBoolChannels;
  for (int u = 0; u < OT; ++u) sums[u] = 0;
  for (int p = 0; p < P; ++p) {
    int64_t acc[OT] = {};
    for (int64_t t = 0; t < terms.size(); ++t) {
      const uint64_t x = rows[terms.x[t] + j];
      const uint64_t* wp = wt + terms.w[t] + p * 2 * OT;
      for (int u = 0; u < OT; ++u) acc[u] += __builtin_popcountll(x & weight_word(wp + u));
    }
    for (int u = 0; u < OT; ++u) sums[u] += p < pos ? acc[u] << shift[p] : -(acc[u] << shift[p]);
  }
}

#if defined(__AVX2__)
// AVX2 tile (stride 1): pixels j0..j0+3 x kBoolChannels output channels. The popcount of each AND
// is the nibble lookup (vpshufb) of Mula et al., counted per byte and summed to 64 bits (vpsadbw)
// every 31 terms, before a byte (at most 8 per term) could overflow. ``sums[u]`` holds the 4
// pixels' sums of channel u.
inline void bool_conv_tile_avx2(const uint64_t* rows, const uint64_t* wt, const BoolTerms& terms,
                                const int* shift, int P, int pos, int64_t j0, __m256i* sums) {
  constexpr int OT = kBoolChannels;
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1,
                                       2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  for (int u = 0; u < OT; ++u) sums[u] = zero;
  const int64_t* xo = terms.x.data();
  const int64_t* wo = terms.w.data();
  for (int p = 0; p < P; ++p) {
    for (int64_t t0 = 0; t0 < terms.size(); t0 += 31) {
      const int64_t t1 = std::min<int64_t>(terms.size(), t0 + 31);
      // Named accumulators: GCC spills arrays of them.
      __m256i a0 = zero, a1 = zero, a2 = zero, a3 = zero, a4 = zero, a5 = zero, a6 = zero, a7 = zero;
      for (int64_t t = t0; t < t1; ++t) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + xo[t] + j0));
        const __m256i xl = _mm256_and_si256(x, low);
        const __m256i xh = _mm256_and_si256(_mm256_srli_epi16(x, 4), low);
        const uint64_t* wp = wt + wo[t] + p * 2 * OT;
        auto count = [&](__m256i& acc, int u) {
          const __m256i lo = _mm256_and_si256(xl, _mm256_set1_epi64x(int64_t(wp[u])));
          const __m256i hi = _mm256_and_si256(xh, _mm256_set1_epi64x(int64_t(wp[OT + u])));
          acc = _mm256_add_epi8(acc, _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo),
                                                     _mm256_shuffle_epi8(lut, hi)));
        };
        count(a0, 0);
        count(a1, 1);
        count(a2, 2);
        count(a3, 3);
        count(a4, 4);
        count(a5, 5);
        count(a6, 6);
        count(a7, 7);
      }
      const __m256i acc[OT] = {a0, a1, a2, a3, a4, a5, a6, a7};
      for (int u = 0; u < OT; ++u) {
        const __m256i s = _mm256_slli_epi64(_mm256_sad_epu8(acc[u], zero), shift[p]);
        sums[u] = p < pos ? _mm256_add_epi64(sums[u], s) : _mm256_sub_epi64(sums[u], s);
      }
    }
  }
}
#endif

}  // namespace

void bool_conv_rows(const uint64_t* padded, const uint64_t* planes, const int* shift, int P,
                           int pos, const int64_t* threshold, int64_t O, const BitGeometry& g,
                           uint64_t* out, int64_t t0, int64_t t1) {
  constexpr int OT = kBoolChannels;
  const int64_t Ow = (O + 63) / 64, tiles = (O + OT - 1) / OT;
  const int64_t tile_words = int64_t(g.kh) * g.kw * g.Cw * P * 2 * OT;
  const BoolTerms terms(g, P);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / g.Ho, i = t % g.Ho;
    const uint64_t* rows = padded + (n * g.Hq + i * g.sh) * g.Cw * g.Wq;
    uint64_t* orow = out + (n * g.Ho + i) * g.Wo * Ow;
    int64_t j = 0;
#if defined(__AVX2__)
    if (g.sw == 1) {  // the padded input has room for whole groups of 4 pixels
      __m256i sums[OT];
      for (; j < g.Wo; j += 4) {
        const int64_t count = std::min<int64_t>(4, g.Wo - j);
        for (int64_t tile = 0; tile < tiles; ++tile) {
          bool_conv_tile_avx2(rows, planes + tile * tile_words, terms, shift, P, pos, j, sums);
          // Per channel, a 4-bit mask of the pixels at or above its threshold.
          for (int u = 0; u < OT && tile * OT + u < O; ++u) {
            const int64_t oc = tile * OT + u;
            const __m256i below = _mm256_cmpgt_epi64(_mm256_set1_epi64x(threshold[oc]), sums[u]);
            const uint64_t hits = ~uint64_t(_mm256_movemask_pd(_mm256_castsi256_pd(below))) & 15u;
            for (int64_t jj = 0; jj < count; ++jj)
              orow[(j + jj) * Ow + oc / 64] |= ((hits >> jj) & 1u) << (oc % 64);
          }
        }
      }
    }
#endif
    for (; j < g.Wo; ++j)
      for (int64_t tile = 0; tile < tiles; ++tile) {
        int64_t s[OT];
        bool_conv_tile_scalar(rows, planes + tile * tile_words, terms, shift, P, pos, j * g.sw, s);
        for (int u = 0; u < OT; ++u) {
          const int64_t oc = tile * OT + u;
          if (oc < O && s[u] >= threshold[oc]) orow[j * Ow + oc / 64] |= uint64_t(1) << (oc % 64);
        }
      }
  }
}

void bit_morph_rows(const uint64_t* padded, const uint64_t* masks, bool erode, uint64_t last,
                           const BitGeometry& g, uint64_t* out, int64_t t0, int64_t t1) {
  const int64_t Wq = g.Wq, Cw = g.Cw;
  const int K = g.kh * g.kw;
  std::vector<uint64_t> acc(g.Wo);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / g.Ho, i = t % g.Ho;
    uint64_t* o = out + t * g.Wo * Cw;
    for (int64_t w = 0; w < Cw; ++w) {
      std::fill(acc.begin(), acc.end(), erode ? ~uint64_t(0) : uint64_t(0));
      for (int q = 0; q < K; ++q) {
        const int ki = q / g.kw, kj = q % g.kw;
        const uint64_t m = masks[int64_t(q) * Cw + w];
        if (m == 0) continue;  // no channel of this word has this SE offset
        const uint64_t* src =
            padded + ((n * g.Hq + i * g.sh + int64_t(ki) * g.dh) * Cw + w) * Wq + int64_t(kj) * g.dw;
        uint64_t* a = acc.data();
        if (erode) {
          const uint64_t nm = ~m;
          if (g.sw == 1)
            for (int64_t j = 0; j < g.Wo; ++j) a[j] &= src[j] | nm;
          else
            for (int64_t j = 0; j < g.Wo; ++j) a[j] &= src[j * g.sw] | nm;
        } else {
          if (g.sw == 1)
            for (int64_t j = 0; j < g.Wo; ++j) a[j] |= src[j] & m;
          else
            for (int64_t j = 0; j < g.Wo; ++j) a[j] |= src[j * g.sw] & m;
        }
      }
      const uint64_t keep = w == Cw - 1 ? last : ~uint64_t(0);
      for (int64_t j = 0; j < g.Wo; ++j) o[j * Cw + w] = acc[j] & keep;
    }
  }
}

#define TROPFX_BOOLEAN_TYPES(X)                                                                   \
  X(bool) X(uint8_t) X(int8_t) X(int16_t) X(int32_t) X(int64_t) X(float) X(double)
#define TROPFX_PACK(T)                                                                             \
  template void pack_bits_rows<T>(const T*, uint64_t*, int64_t, int64_t, int64_t, int64_t, int64_t); \
  template void unpack_bits_planes<T>(const uint64_t*, T*, int64_t, int64_t, int64_t, int64_t,     \
                                      int64_t, int64_t);
TROPFX_BOOLEAN_TYPES(TROPFX_PACK)

}  // namespace tropfx
