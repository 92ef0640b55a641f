// The bit-packed boolean kernels (see boolean.h for the layouts and semantics). Torch-free.
#include "boolean.h"
#include "simd.h"

#include <climits>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace tropfx {

// Entry points: documented in boolean.h.

namespace {

// One round of the 64 x 64 transpose: exchange the bits J..2J-1 of word k with the bits 0..J-1 of
// word k + J, for the k whose bit J is clear. For J >= 4 the inner loop runs over consecutive
// words, which the compiler vectorizes.
template <int J>
inline void transpose_round(uint64_t a[64]) {
  constexpr uint64_t m = ~uint64_t(0) / ((uint64_t(1) << J) + 1);  // J ones, J zeros, ...
  for (int base = 0; base < 64; base += 2 * J)
    for (int k = base; k < base + J; ++k) {
      const uint64_t t = ((a[k] >> J) ^ a[k + J]) & m;
      a[k] ^= t << J;
      a[k + J] ^= t;
    }
}

#if defined(__AVX512VBMI__) && defined(__GFNI__)
// 8 x 8 transpose of the 64-bit lanes of r[0..8): lane j of r[i] <-> lane i of r[j]. Three rounds
// of two-source permutes, exchanging 1 x 1, then 2 x 2, then 4 x 4 blocks of lanes.
inline __attribute__((always_inline)) void transpose_lanes8(__m512i r[8]) {
  const __m512i lo1 = _mm512_setr_epi64(0, 8, 2, 10, 4, 12, 6, 14);
  const __m512i hi1 = _mm512_setr_epi64(1, 9, 3, 11, 5, 13, 7, 15);
  const __m512i lo2 = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
  const __m512i hi2 = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
  const __m512i lo4 = _mm512_setr_epi64(0, 1, 2, 3, 8, 9, 10, 11);
  const __m512i hi4 = _mm512_setr_epi64(4, 5, 6, 7, 12, 13, 14, 15);
  auto round = [&](int step, __m512i lo, __m512i hi) __attribute__((always_inline)) {
    for (int i = 0; i < 8; ++i)
      if ((i & step) == 0) {
        const __m512i a = r[i], b = r[i + step];
        r[i] = _mm512_permutex2var_epi64(a, lo, b);
        r[i + step] = _mm512_permutex2var_epi64(a, hi, b);
      }
  };
  round(1, lo1, hi1);
  round(2, lo2, hi2);
  round(4, lo4, hi4);
}

// The byte permutations of transpose64: ``gather`` puts byte b of the register's word r at byte
// 7 - r of its word b (a qword per 8 x 8 bit block, rows reversed, as GF2P8AFFINEQB reads a matrix),
// ``spread`` is the 8 x 8 byte transpose (byte 8 w + b <- byte 8 b + w).
struct TransposeIndex {
  alignas(64) uint8_t gather[64], spread[64];
  constexpr TransposeIndex() : gather(), spread() {
    for (int w = 0; w < 8; ++w)
      for (int b = 0; b < 8; ++b) {
        gather[b * 8 + 7 - w] = uint8_t(w * 8 + b);
        spread[w * 8 + b] = uint8_t(b * 8 + w);
      }
  }
};
inline constexpr TransposeIndex kTransposeIndex{};
#endif

// 64 x 64 bit matrix transpose in place, bit j of word k <-> bit k of word j.
// AVX-512 VBMI + GFNI: as an 8 x 8 matrix of 8 x 8 bit blocks. Block (K, B) is byte B of words
// 8K .. 8K + 7; one byte permute per register of 8 words gathers each block into a qword, one
// GF2P8AFFINEQB per register transposes the 8 blocks in it (byte c of the result takes bit c of
// every row: the affine map of the unit byte 1 << c), an 8 x 8 transpose of the registers' qwords
// and a second byte permute put each block where its transpose belongs.
// Otherwise Warren, Hacker's Delight 7-3: swap ever smaller off-diagonal blocks, 6 rounds of 32
// masked exchanges.
inline void transpose64(uint64_t a[64]) {
#if defined(__AVX512VBMI__) && defined(__GFNI__)
  const __m512i gather = _mm512_load_si512(kTransposeIndex.gather);
  const __m512i spread = _mm512_load_si512(kTransposeIndex.spread);
  const __m512i units = _mm512_set1_epi64(int64_t(0x8040201008040201ull));
  __m512i r[8];
  for (int k = 0; k < 8; ++k) {
    const __m512i blocks = _mm512_permutexvar_epi8(gather, _mm512_loadu_si512(a + 8 * k));
    r[k] = _mm512_gf2p8affine_epi64_epi8(units, blocks, 0);
  }
  transpose_lanes8(r);
  for (int k = 0; k < 8; ++k) _mm512_storeu_si512(a + 8 * k, _mm512_permutexvar_epi8(spread, r[k]));
#else
  transpose_round<32>(a);
  transpose_round<16>(a);
  transpose_round<8>(a);
  transpose_round<4>(a);
  transpose_round<2>(a);
  transpose_round<1>(a);
#endif
}

// bit j = p[j] != 0, for j < n <= 64 (NaN is nonzero, -0.0 is zero, as in C++). AVX2: chunks of
// 32 bytes (the last one through a buffer) or 8 floats (the rest one by one).
template <typename T>
inline uint64_t nonzero_mask(const T* p, int64_t n) {
  uint64_t m = 0;
  int64_t j = 0;
#if defined(__AVX2__)
  if constexpr (sizeof(T) == 1) {  // bool, uint8, int8
    const __m256i z = _mm256_setzero_si256();
    for (; j < n; j += 32) {
      __m256i v;
      if (j + 32 <= n) {
        v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + j));
      } else {  // the tail through a zeroed buffer
        alignas(32) uint8_t tail[32] = {};
        std::memcpy(tail, p + j, size_t(n - j));
        v = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
      }
      m |= uint64_t(~uint32_t(_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, z)))) << j;
    }
  } else if constexpr (std::is_same_v<T, float>) {
    for (; j + 8 <= n; j += 8) {
      const __m256 v = _mm256_cmp_ps(_mm256_loadu_ps(p + j), _mm256_setzero_ps(), _CMP_NEQ_UQ);
      m |= uint64_t(uint32_t(_mm256_movemask_ps(v))) << j;
    }
  }
#endif
  for (; j < n; ++j) m |= uint64_t(p[j] != T(0)) << j;
  return m;
}

// out[j] = bit j of m as 0 / 1, for j < n <= 64; AVX2 chunks as in nonzero_mask.
template <typename T>
inline void expand_mask(uint64_t m, T* out, int64_t n) {
  int64_t j = 0;
#if defined(__AVX2__)
  if constexpr (sizeof(T) == 1) {
    // byte i of a chunk reads byte i / 8 of the chunk's 32 bits, then its bit i % 8
    const __m256i pick = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2,
                                          2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i select = _mm256_set1_epi64x(int64_t(0x8040201008040201ull));
    const __m256i one = _mm256_set1_epi8(1);
    for (; j < n; j += 32) {
      const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(int32_t(uint32_t(m >> j))), pick);
      const __m256i bits = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, select), select), one);
      if (j + 32 <= n) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), bits);
      } else {  // the tail through a buffer
        alignas(32) uint8_t tail[32];
        _mm256_store_si256(reinterpret_cast<__m256i*>(tail), bits);
        std::memcpy(out + j, tail, size_t(n - j));
      }
    }
  } else if constexpr (std::is_same_v<T, float>) {
    const __m256i select = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; j + 8 <= n; j += 8) {
      const __m256i v = _mm256_and_si256(_mm256_set1_epi32(int32_t((m >> j) & 0xff)), select);
      _mm256_storeu_ps(out + j, _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(v, select)), one));
    }
  }
#endif
  for (; j < n; ++j) out[j] = T(float((m >> j) & 1u));
}

}  // namespace

// Both by 64 x 64 bit transposes of (64 channels x 64 pixels) blocks of a row.
template <typename T>
void pack_bits_rows(const T* x, uint64_t* out, int64_t C, int64_t H, int64_t W, int64_t t0,
                    int64_t t1) {
  const int64_t Cw = (C + 63) / 64;
  alignas(64) uint64_t a[64];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / H, h = t % H;
    for (int64_t cw = 0; cw < Cw; ++cw)
      for (int64_t p0 = 0; p0 < W; p0 += 64) {
        const int64_t w1 = std::min<int64_t>(64, W - p0);
        for (int64_t k = 0; k < 64; ++k) {
          const int64_t c = cw * 64 + k;
          a[k] = c < C ? nonzero_mask(x + ((n * C + c) * H + h) * W + p0, w1) : 0;
        }
        transpose64(a);
        uint64_t* o = out + (t * W + p0) * Cw + cw;
        for (int64_t j = 0; j < w1; ++j) o[j * Cw] = a[j];
      }
  }
}

template <typename T>
void unpack_bits_rows(const uint64_t* packed, T* out, int64_t C, int64_t H, int64_t W,
                      int64_t Cw, int64_t t0, int64_t t1) {
  alignas(64) uint64_t a[64];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / H, h = t % H;
    for (int64_t cw = 0; cw < Cw; ++cw)
      for (int64_t p0 = 0; p0 < W; p0 += 64) {
        const int64_t w1 = std::min<int64_t>(64, W - p0);
        const uint64_t* src = packed + (t * W + p0) * Cw + cw;
        for (int64_t j = 0; j < 64; ++j) a[j] = j < w1 ? src[j * Cw] : 0;
        transpose64(a);
        const int64_t c1 = std::min<int64_t>(64, C - cw * 64);
        for (int64_t k = 0; k < c1; ++k)
          expand_mask(a[k], out + ((n * C + cw * 64 + k) * H + h) * W + p0, w1);
      }
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
// every 31 terms, before a byte (at most 8 per term) could overflow. ``s0..s7`` hold the 4
// pixels' sums of channels 0..7. NT > 0: the number of terms, known at compile time (<= 31, one
// chunk, fully unrolled); NT == 0: ``nt`` terms, in chunks of 31.
template <int NT>
inline __attribute__((always_inline)) void bool_conv_tile_avx2(
    const uint64_t* rows, const uint64_t* wt, const int64_t* xo, int64_t nt,
    const int* shift, int P, int pos, int64_t j0, __m256i& s0, __m256i& s1, __m256i& s2,
    __m256i& s3, __m256i& s4, __m256i& s5, __m256i& s6, __m256i& s7) {
  constexpr int OT = kBoolChannels;
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1,
                                       2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero;
  const int64_t terms = NT > 0 ? NT : nt;
  const uint64_t* xr = rows + j0;
  for (int p = 0; p < P; ++p) {
    for (int64_t t0 = 0; t0 < terms; t0 += 31) {
      const int64_t t1 = NT > 0 ? NT : std::min<int64_t>(terms, t0 + 31);
      // Named accumulators: GCC spills arrays of them.
      __m256i a0 = zero, a1 = zero, a2 = zero, a3 = zero, a4 = zero, a5 = zero, a6 = zero, a7 = zero;
#pragma GCC unroll 32
      for (int64_t t = t0; t < t1; ++t) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + xo[t]));
        const __m256i xl = _mm256_and_si256(x, low);
        const __m256i xh = _mm256_and_si256(_mm256_srli_epi16(x, 4), low);
        const __m256i* wp = reinterpret_cast<const __m256i*>(wt) + (p * terms + t) * 2 * OT;
        auto count = [&](__m256i& acc, int u) __attribute__((always_inline)) {
          const __m256i lo = _mm256_and_si256(xl, _mm256_loadu_si256(wp + u));
          const __m256i hi = _mm256_and_si256(xh, _mm256_loadu_si256(wp + OT + u));
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
      const int sh = shift[p];
      const bool plus = p < pos;
      auto fold = [&](__m256i& sum, __m256i acc) __attribute__((always_inline)) {
        const __m256i v = _mm256_slli_epi64(_mm256_sad_epu8(acc, zero), sh);
        sum = plus ? _mm256_add_epi64(sum, v) : _mm256_sub_epi64(sum, v);
      };
      fold(s0, a0);
      fold(s1, a1);
      fold(s2, a2);
      fold(s3, a3);
      fold(s4, a4);
      fold(s5, a5);
      fold(s6, a6);
      fold(s7, a7);
    }
  }
}

// 4 bits (pixels 0..3) spread to bit 0 of bytes 0..3.
inline uint32_t spread4(uint64_t h) { return uint32_t((h * 0x00204081u) & 0x01010101u); }

// One output row, stride 1: per tile of 8 output channels and group of 4 pixels, the sums, the
// threshold compare, and the tile's 8 output bits of each pixel written as one byte.
template <int NT>
void bool_conv_row_avx2(const uint64_t* rows, const uint64_t* planes, int64_t tile_words,
                        const int64_t* xo, int64_t nt, const int* shift, int P,
                        int pos, const int64_t* thr, int64_t tiles, int64_t Wo, int64_t Ow,
                        uint64_t* orow) {
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const uint64_t* wt = planes + tile * tile_words;
    const int64_t* th = thr + tile * kBoolChannels;
    uint8_t* ob = reinterpret_cast<uint8_t*>(orow + tile / 8) + tile % 8;
    for (int64_t j = 0; j < Wo; j += 4) {
      __m256i s0, s1, s2, s3, s4, s5, s6, s7;
      bool_conv_tile_avx2<NT>(rows, wt, xo, nt, shift, P, pos, j, s0, s1, s2, s3, s4, s5, s6, s7);
      auto bits = [&](__m256i s, int u) __attribute__((always_inline)) {
        const __m256i below = _mm256_cmpgt_epi64(_mm256_set1_epi64x(th[u]), s);
        const uint64_t hits = ~uint64_t(_mm256_movemask_pd(_mm256_castsi256_pd(below))) & 15u;
        return spread4(hits) << u;
      };
      const uint32_t b = bits(s0, 0) | bits(s1, 1) | bits(s2, 2) | bits(s3, 3) | bits(s4, 4) |
                         bits(s5, 5) | bits(s6, 6) | bits(s7, 7);
      const int64_t count = std::min<int64_t>(4, Wo - j);
      for (int64_t jj = 0; jj < count; ++jj) ob[(j + jj) * Ow * 8] = uint8_t(b >> (8 * jj));
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
#if defined(__AVX2__)
  if (g.sw == 1) {  // the padded input has room for whole groups of 4 pixels
    // Thresholds per tile slot; a channel past O never fires.
    std::vector<int64_t> thr(tiles * OT, INT64_MAX);
    std::copy(threshold, threshold + O, thr.begin());
    const int64_t nt = terms.size();
    // The weight nibble words broadcast to whole vectors (4 copies), (tiles, P, terms, 2, OT, 4):
    // the AND reads them from memory, no broadcast per use.
    const int64_t btile = int64_t(P) * nt * 2 * OT * 4;
    std::vector<uint64_t> bw_store(tiles * btile + 8);  // + room to align to 64 bytes
    uint64_t* bw = bw_store.data() + (-(reinterpret_cast<uintptr_t>(bw_store.data()) / 8) & 7u);
    for (int64_t tile = 0; tile < tiles; ++tile)
      for (int p = 0; p < P; ++p)
        for (int64_t k = 0; k < nt; ++k)
          for (int h = 0; h < 2; ++h)
            for (int u = 0; u < OT; ++u)
              std::fill_n(&bw[tile * btile + (((p * nt + k) * 2 + h) * OT + u) * 4], 4,
                          planes[tile * tile_words + terms.w[k] + (p * 2 + h) * OT + u]);
    auto run = [&](auto kernel) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / g.Ho, i = t % g.Ho;
        const uint64_t* rows = padded + (n * g.Hq + i * g.sh) * g.Cw * g.Wq;
        uint64_t* orow = out + (n * g.Ho + i) * g.Wo * Ow;
        kernel(rows, bw, btile, terms.x.data(), nt, shift, P, pos,
               thr.data(), tiles, g.Wo, Ow, orow);
      }
    };
    if (nt == 9)
      run(bool_conv_row_avx2<9>);
    else if (nt == 1)
      run(bool_conv_row_avx2<1>);
    else if (nt == 18)
      run(bool_conv_row_avx2<18>);
    else if (nt == 25)
      run(bool_conv_row_avx2<25>);
    else
      run(bool_conv_row_avx2<0>);
    return;
  }
#endif
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / g.Ho, i = t % g.Ho;
    const uint64_t* rows = padded + (n * g.Hq + i * g.sh) * g.Cw * g.Wq;
    uint64_t* orow = out + (n * g.Ho + i) * g.Wo * Ow;
    for (int64_t j = 0; j < g.Wo; ++j)
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

// --- Bit-sliced boolean convolution (stride 1) -----------------------------------------------

namespace {

constexpr int kLanes = kVecBytes / 8;
typedef uint64_t vbits __attribute__((vector_size(kVecBytes)));

inline vbits load_bits(const uint64_t* p) {
  vbits v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The bitwise majority and parity of three vectors: one VPTERNLOGQ each with AVX-512 (the
// immediate is the function's truth table on a = 0xf0, b = 0xcc, c = 0xaa), four and two
// instructions otherwise, two of them shared when both are needed (u = a ^ b).
#if defined(__AVX512F__)
template <int imm>
inline __attribute__((always_inline)) vbits ternary(vbits a, vbits b, vbits c) {
  static_assert(imm == 0xe8 || imm == 0x96, "majority or parity");
  if constexpr (sizeof(vbits) == 64) {
    return vbits(_mm512_ternarylogic_epi64(__m512i(a), __m512i(b), __m512i(c), imm));
  }
#if defined(__AVX512VL__)
  if constexpr (sizeof(vbits) == 32) {
    return vbits(_mm256_ternarylogic_epi64(__m256i(a), __m256i(b), __m256i(c), imm));
  }
#endif
  if constexpr (imm == 0xe8) return (a & b) | ((a ^ b) & c);
  return a ^ b ^ c;
}
inline __attribute__((always_inline)) vbits majority(vbits a, vbits b, vbits c) {
  return ternary<0xe8>(a, b, c);
}
inline __attribute__((always_inline)) vbits parity(vbits a, vbits b, vbits c) {
  return ternary<0x96>(a, b, c);
}
#else
inline __attribute__((always_inline)) vbits majority(vbits a, vbits b, vbits c) {
  return (a & b) | ((a ^ b) & c);
}
inline __attribute__((always_inline)) vbits parity(vbits a, vbits b, vbits c) { return a ^ b ^ c; }
#endif

// Carry-save adder: h * 2 + l = a + b + c, bitwise.
inline __attribute__((always_inline)) void csa(vbits& h, vbits& l, vbits a, vbits b, vbits c) {
  h = majority(a, b, c);
  l = parity(a, b, c);
}

constexpr int kMaxSliceBits = 64;

// Eight taps folded into the running 1, 2 and 4 planes by 7 carry-save adders; returns the carry of
// weight 8. The running planes go in as c: their dependency chain is one XOR per adder.
inline __attribute__((always_inline)) vbits fold8(const uint64_t* b, const int32_t* o, vbits& ones,
                                                  vbits& twos, vbits& fours) {
  vbits twos_a, twos_b, fours_a, fours_b, eights;
  csa(twos_a, ones, load_bits(b + o[0]), load_bits(b + o[1]), ones);
  csa(twos_b, ones, load_bits(b + o[2]), load_bits(b + o[3]), ones);
  csa(fours_a, twos, twos_a, twos_b, twos);
  csa(twos_a, ones, load_bits(b + o[4]), load_bits(b + o[5]), ones);
  csa(twos_b, ones, load_bits(b + o[6]), load_bits(b + o[7]), ones);
  csa(fours_b, twos, twos_a, twos_b, twos);
  csa(eights, fours, fours_a, fours_b, fours);
  return eights;
}

// A carry added into the ``nh`` planes hi[0 ..] (half adders, least significant first).
inline __attribute__((always_inline)) void ripple(vbits carry, vbits* hi, int nh) {
  for (int k = 0; k < nh; ++k) {
    const vbits h = hi[k];
    hi[k] = h ^ carry;
    carry = h & carry;
  }
}

// Sixteen taps added to the running count: two 8-tap folds, their carries of weight 8 into the 8
// plane, its carry of weight 16 rippled into the ``nh`` high planes.
inline __attribute__((always_inline)) void add16(const uint64_t* b, const int32_t* o, vbits& ones,
                                                 vbits& twos, vbits& fours, vbits& eights,
                                                 vbits* hi, int nh) {
  const vbits eights_a = fold8(b, o, ones, twos, fours);
  const vbits eights_b = fold8(b, o + 8, ones, twos, fours);
  vbits carry;
  csa(carry, eights, eights_a, eights_b, eights);
  ripple(carry, hi, nh);
}

// The bit-sliced count of the ``n`` taps (a multiple of 8) at word q: bits[0 .. 4 + nh) of the
// count, least significant first, nh = slice_width(n) - 4 high planes. Harley-Seal: 15 carry-save
// adders fold 16 taps into the 1, 2, 4 and 8 planes and one carry of weight 16, which ripples into
// the high planes; a last 8 taps fold into the 1, 2 and 4 planes and a carry of weight 8. NH >= 0:
// nh known at compile time, the high planes in registers; NH < 0: any nh, in ``bits``.
template <int NH>
inline __attribute__((always_inline)) void slice_count_planes(const uint64_t* b, const int32_t* off,
                                                              int64_t n, int nh, vbits* bits) {
  constexpr int kHeld = NH > 0 ? NH : 1;
  const vbits zero = {};
  vbits ones = zero, twos = zero, fours = zero, eights = zero, held[kHeld];
  vbits* hi = NH >= 0 ? held : bits + 4;
  if constexpr (NH >= 0) nh = NH;
  for (int k = 0; k < nh; ++k) hi[k] = zero;
  const int64_t n16 = n & ~int64_t(15);
  for (int64_t t = 0; t < n16; t += 16) add16(b, off + t, ones, twos, fours, eights, hi, nh);
  if (n16 < n) {
    const vbits carry = fold8(b, off + n16, ones, twos, fours);
    ripple(eights & carry, hi, nh);
    eights ^= carry;
  }
  bits[0] = ones;
  bits[1] = twos;
  bits[2] = fours;
  bits[3] = eights;
  if constexpr (NH >= 0)
    for (int k = 0; k < NH; ++k) bits[4 + k] = held[k];
}

// slice_count_planes at word q; returns the count's width, slice_width(n).
inline __attribute__((always_inline)) int slice_count(const uint64_t* image, const int32_t* off,
                                                      int64_t n, int64_t q, vbits* bits) {
  const int width = slice_width(n), nh = width - 4;
  const uint64_t* b = image + q;
  switch (nh) {
#define TROPFX_COUNT(NH) \
    case NH: slice_count_planes<NH>(b, off, n, nh, bits); break;
    TROPFX_COUNT(0) TROPFX_COUNT(1) TROPFX_COUNT(2) TROPFX_COUNT(3) TROPFX_COUNT(4)
    TROPFX_COUNT(5) TROPFX_COUNT(6)
#undef TROPFX_COUNT
    default: slice_count_planes<-1>(b, off, n, nh, bits);
  }
  return width;
}

// Lanes where the bit-sliced number bits[0 .. width) is >= t (t > 0, t < 2^width).
inline vbits slice_at_least(const vbits* bits, int width, int64_t t) {
  vbits gt = {}, eq = ~vbits{};
  for (int k = width - 1; k >= 0; --k) {
    if ((t >> k) & 1) {
      eq &= bits[k];
    } else {
      gt |= eq & bits[k];
      eq &= ~bits[k];
    }
  }
  return gt | eq;
}

inline bool all_lanes(vbits m, uint64_t value) {
  for (int k = 0; k < kLanes; ++k)
    if (m[k] != value) return false;
  return true;
}

// The lanes of the vector at word q that are output pixels (not the tail of a row's last word,
// not the words past the last row).
inline vbits valid_lanes(const SliceGeometry& s, int64_t q) {
  vbits v;
  const int tail = int(s.Wo - 64 * (s.Wow - 1));  // pixels in a row's last word, 1 .. 64
  const int64_t group = q / kLanes / s.Wow, w = q / kLanes % s.Wow;  // the vector's rows and word
  const bool last = w == s.Wow - 1;
  for (int k = 0; k < kLanes; ++k) {
    const int64_t row = group + s.S * k;
    v[k] = row >= s.Ho ? 0 : last && tail < 64 ? (uint64_t(1) << tail) - 1 : ~uint64_t(0);
  }
  return v;
}

// 1[count >= t] for a plane of nonnegative taps (0 < t <= real, the taps before padding), with an
// early exit: when t is small every valid lane may reach it long before the last tap (a dilation:
// t = 1), when t is large every valid lane may fall out of reach (an erosion: t = |S|); the other
// lanes' bits are never read. Checked every 32 taps, and only for t in the outer quarters of
// [0, real], where a mid threshold would rarely exit.
inline vbits slice_threshold(const uint64_t* image, const int32_t* off, int64_t n, int64_t real,
                             int64_t q, int64_t t, vbits valid, vbits* bits) {
  const bool watch_high = 4 * t <= real, watch_low = 4 * t >= 3 * real;
  if (!slice_exits_early(t, real)) {
    const int w = slice_count(image, off, n, q, bits);
    return slice_at_least(bits, w, t);
  }
  const vbits zero = {};
  vbits ones = zero, twos = zero, fours = zero, eights = zero;
  vbits* hi = bits + 4;
  const int nh = slice_width(n) - 4, width = 4 + nh;
  for (int k = 0; k < nh; ++k) hi[k] = zero;
  const uint64_t* b = image + q;
  for (int64_t t0 = 0; t0 < n; t0 += 16) {
    add16(b, off + t0, ones, twos, fours, eights, hi, nh);
    if (t0 % 32 != 16 || t0 + 16 >= n) continue;
    bits[0] = ones, bits[1] = twos, bits[2] = fours, bits[3] = eights;  // the count so far
    if (watch_high && all_lanes(slice_at_least(bits, width, t) | ~valid, ~uint64_t(0))) return ~zero;
    const int64_t need = t - std::max<int64_t>(0, real - (t0 + 16));  // what the rest cannot add
    if (watch_low && need > 0 && all_lanes(slice_at_least(bits, width, need) & valid, 0)) return zero;
  }
  bits[0] = ones, bits[1] = twos, bits[2] = fours, bits[3] = eights;
  return slice_at_least(bits, width, t);
}

int bit_length(uint64_t v) { return v == 0 ? 0 : 64 - __builtin_clzll(v); }

// out = a + b, a of WA planes and b of WB, into WO planes (the caller knows the sum fits): a full
// adder (a majority and a parity) where both have a plane, a half adder where one has, the carry
// alone above both; the conditions fold away once the loop is unrolled.
template <int WA, int WB, int WO>
inline __attribute__((always_inline)) void slice_add(const vbits* a, const vbits* b, vbits* out) {
  vbits carry = {};
#pragma GCC unroll 32
  for (int k = 0; k < WO; ++k) {
    if (k < WA && k < WB) {
      const vbits x = a[k], y = b[k];
      if (k == 0) {
        out[k] = x ^ y;
        carry = x & y;
      } else {
        out[k] = parity(x, y, carry);
        carry = majority(x, y, carry);
      }
    } else if (k < WA || k < WB) {
      const vbits x = k < WA ? a[k] : b[k];
      out[k] = x ^ carry;
      carry = x & carry;
    } else {
      out[k] = carry;
      carry = vbits{};
    }
  }
}

// out = c[a] + c[b] + c[d] + c[e], PW planes each, into PW + 2 planes (4 (2^PW - 1) < 2^(PW + 2)).
template <int PW>
inline __attribute__((always_inline)) void slice_sum4(const vbits* c, int a, int b, int d, int e,
                                                      vbits* out) {
  vbits two[PW + 1], three[PW + 2];
  slice_add<PW, PW, PW + 1>(c + a * PW, c + b * PW, two);
  slice_add<PW + 1, PW, PW + 2>(two, c + d * PW, three);
  slice_add<PW + 2, PW, PW + 2>(three, c + e * PW, out);
}

// The four channels' outputs 1[count_k >= threshold[k]] at word q. Each pattern's count, then
// channel k's as the sum of the patterns with bit k: with E_x the sum of the patterns whose bits
// 0-1 are x, and F_y of those whose bits 2-3 are y, count_0 = E_1 + E_3, count_1 = E_2 + E_3,
// count_2 = F_1 + F_3, count_3 = F_2 + F_3 (E_x takes every pattern x + 4 h, F_y every pattern
// l + 4 y, so each pattern with bit k counts once). In this order at most two sums are live (E_3
// or F_3, and the one being formed): they stay in registers. The sums grow a plane per doubling,
// from PW planes to PW + 3 (8 (2^PW - 1) < 2^(PW + 3)) instead of all at the widest.
template <int PW>
void quad_hits(const uint64_t* image, const SliceQuad& quad, int64_t q, vbits* c,
               const int64_t* threshold, vbits* hit) {
  for (int m = 1; m < 16; ++m) {
    const int64_t n = quad.begin[m + 1] - quad.begin[m];
    if (n > 0) slice_count(image, quad.offsets.data() + quad.begin[m], n, q, c + m * PW);
  }
  constexpr int E = PW + 2, C = PW + 3;
  vbits shared[E], sum[E], total[C];
  // Channel k: the sum of patterns a + s * j (j = 0 .. 3), plus ``shared``.
  auto channel = [&](int k, int a, int s) __attribute__((always_inline)) {
    slice_sum4<PW>(c, a, a + s, a + 2 * s, a + 3 * s, sum);
    slice_add<E, E, C>(sum, shared, total);
    hit[k] = slice_at_least(total, C, threshold[k]);
  };
  slice_sum4<PW>(c, 3, 7, 11, 15, shared);  // E_3
  channel(0, 1, 4);                          // E_1 + E_3
  channel(1, 2, 4);                          // E_2 + E_3
  slice_sum4<PW>(c, 12, 13, 14, 15, shared);  // F_3
  channel(2, 4, 1);                           // F_1 + F_3
  channel(3, 8, 1);                           // F_2 + F_3
}

// One quad over the words [q0, q1) of image n. The planes it works in: pattern m's count at
// c[m * PW], PW planes (PW: the widest pattern count's slice_width, so every count fits; a count's
// planes past its own width stay zero).
template <int PW>
void quad_block(const uint64_t* image, const SliceQuad& quad, const int64_t* threshold,
                int64_t q0, int64_t q1, int64_t Lq, uint64_t* dst) {
  vbits c[16 * PW];
  // The planes of each pattern's slot that its count never writes stay zero.
  for (int m = 1; m < 16; ++m) {
    const int64_t n = quad.begin[m + 1] - quad.begin[m];
    for (int k = n > 0 ? slice_width(n) : 0; k < PW; ++k) c[m * PW + k] = vbits{};
  }
  for (int64_t q = q0; q < q1; q += kLanes) {
    vbits hit[4];
    quad_hits<PW>(image, quad, q, c, threshold, hit);
    for (int k = 0; k < 4; ++k) std::memcpy(dst + k * Lq + q, &hit[k], sizeof hit[k]);
  }
}

// quad_block for the quad's width, 4 .. kQuadBits - 3 (choose_quad keeps it there).
void quad_dispatch(int width, const uint64_t* image, const SliceQuad& quad,
                   const int64_t* threshold, int64_t q0, int64_t q1, int64_t Lq, uint64_t* dst) {
  static_assert(kQuadBits - 3 == 13, "one case per width");
  switch (width) {
#define TROPFX_QUAD(PW) \
    case PW: return quad_block<PW>(image, quad, threshold, q0, q1, Lq, dst);
    TROPFX_QUAD(4) TROPFX_QUAD(5) TROPFX_QUAD(6) TROPFX_QUAD(7) TROPFX_QUAD(8) TROPFX_QUAD(9)
    TROPFX_QUAD(10) TROPFX_QUAD(11) TROPFX_QUAD(12) TROPFX_QUAD(13)
#undef TROPFX_QUAD
  }
}

}  // namespace

SliceGeometry slice_geometry(const BitGeometry& g, int64_t C) {
  SliceGeometry s{};
  s.N = g.N, s.C = C, s.H = g.H, s.W = g.W, s.Cw = g.Cw;
  s.Ho = g.Ho, s.Wo = g.Wo, s.Hq = g.Hq;
  s.kh = g.kh, s.kw = g.kw, s.ph = g.ph, s.pw = g.pw, s.dh = g.dh, s.dw = g.dw;
  s.Wow = (g.Wo + 63) / 64;
  s.lanes = kLanes;
  s.S = (g.Ho + kLanes - 1) / kLanes;
  s.U = s.S + int64_t(g.kh - 1) * g.dh;
  s.Lq = s.S * s.Wow * kLanes;
  s.Ps = s.U * s.Wow * kLanes;  // whole vectors: in an aligned buffer, every tap loads whole lines
  s.zero = C * g.kw * s.Ps;
  s.image = s.zero + s.Ps;
  return s;
}

void slice_planes(const uint64_t* x, uint64_t* planes, const SliceGeometry& s, int64_t t0,
                  int64_t t1) {
  // Channel c's row h of bits sits at rows[(c * H + h) * stride + lead], with ``lead`` zero words
  // before it and enough after it that every word an output word reads (bits w * 64 + kj * dw - pw
  // .. + 63) exists.
  const int64_t Wb = (s.W + 63) / 64;
  const int64_t lead = (s.pw + 63) / 64;
  const int64_t reach = s.Wow + (int64_t(s.kw - 1) * s.dw + 63) / 64;
  const int64_t stride = lead + std::max(Wb, reach) + 1;
  const bool short_rows = Wb == 1 && s.Wow == 1;  // one word per row in and out: stride unused
  // Zeroed (the words around each row) only where the general layout below uses it.
  const int64_t row_words = 64 * (short_rows ? s.H + 1 : s.H * stride);
  std::unique_ptr<uint64_t[]> rows(new uint64_t[row_words]);
  bool rows_zeroed = false;
  // Where output word w of column offset kj starts: word and bit of the row buffer.
  std::vector<int64_t> word(s.kw * s.Wow);
  std::vector<int> bit(s.kw * s.Wow);
  for (int kj = 0; kj < s.kw; ++kj)
    for (int64_t w = 0; w < s.Wow; ++w) {
      const int64_t b = lead * 64 + w * 64 + int64_t(kj) * s.dw - s.pw;
      word[kj * s.Wow + w] = b / 64;
      bit[kj * s.Wow + w] = int(b % 64);
    }
  // The input row (0 .. H, or -1 for padding) of every word of a plane, in plane order.
  const int64_t L = s.lanes, per_plane = s.U * L;
  std::vector<int64_t> source(per_plane);
  for (int64_t u = 0; u < s.U; ++u)
    for (int64_t l = 0; l < L; ++l) {
      const int64_t h = u + s.S * l - s.ph;
      source[u * L + l] = h >= 0 && h < s.H ? h : -1;
    }
  // short_rows: a channel's plane before the column shift, its rows in plane order (the word at
  // H of a channel's rows is zero: the padding rows read it).
  std::vector<int64_t> row_of(short_rows ? per_plane : 0);
  for (int64_t p = 0; p < int64_t(row_of.size()); ++p) row_of[p] = source[p] < 0 ? s.H : source[p];
  std::vector<vbits> base(short_rows ? per_plane / L : 0);
  alignas(64) uint64_t a[64];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / s.Cw, cw = t % s.Cw;
    uint64_t* image = planes + n * s.image;
    if (cw == 0) std::fill(image + s.zero, image + s.image, uint64_t(0));
    const int64_t c1 = std::min<int64_t>(64, s.C - cw * 64);
    if (c1 <= 0) continue;  // no weight reads these channels
    if (short_rows) {
      // Each transposed word is a whole row (channel k's row h at rows[k * (H + 1) + h]). A
      // channel's rows are put in plane order once, then shifted into its kw planes a vector at
      // a time (measured: 31 -> 27 us of the P4 call on 2 threads).
      const int64_t H = s.H, W = s.W, Cw = s.Cw, Ps = s.Ps, R = H + 1;
      for (int64_t h = 0; h < H; ++h) {
        const uint64_t* src = x + (n * H + h) * W * Cw + cw;
        for (int64_t k = 0; k < W; ++k) a[k] = src[k * Cw];
        for (int64_t k = W; k < 64; ++k) a[k] = 0;
        transpose64(a);
        for (int64_t k = 0; k < c1; ++k) rows[k * R + h] = a[k];
      }
      for (int64_t k = 0; k < c1; ++k) {
        const uint64_t* row = &rows[k * R];
        rows[k * R + H] = 0;
        uint64_t* flat = reinterpret_cast<uint64_t*>(base.data());
        for (int64_t p = 0; p < per_plane; ++p) flat[p] = row[row_of[p]];
        // Ps == per_plane (one word per row): whole vectors, and every plane starts on one
        for (int kj = 0; kj < s.kw; ++kj) {
          vbits* dst = reinterpret_cast<vbits*>(image + ((cw * 64 + k) * s.kw + kj) * Ps);
          const int64_t sh = int64_t(kj) * s.dw - s.pw;  // bit j reads pixel j + sh
          const int64_t nv = per_plane / L;
          if (sh <= -64 || sh >= 64) {
            for (int64_t v = 0; v < nv; ++v) dst[v] = vbits{};
          } else if (sh >= 0) {
            for (int64_t v = 0; v < nv; ++v) dst[v] = base[v] >> sh;
          } else {
            for (int64_t v = 0; v < nv; ++v) dst[v] = base[v] << -sh;
          }
        }
      }
      continue;
    }
    // The 64 channels' rows, by 64 x 64 bit transposes of (64 pixels x 64 channels) blocks.
    if (!rows_zeroed) std::fill(rows.get(), rows.get() + row_words, uint64_t(0));
    rows_zeroed = true;
    for (int64_t h = 0; h < s.H; ++h) {
      const uint64_t* src = x + (n * s.H + h) * s.W * s.Cw + cw;
      for (int64_t pb = 0; pb < Wb; ++pb) {
        const int64_t w1 = std::min<int64_t>(64, s.W - pb * 64);
        for (int64_t k = 0; k < w1; ++k) a[k] = src[(pb * 64 + k) * s.Cw];
        for (int64_t k = w1; k < 64; ++k) a[k] = 0;
        transpose64(a);
        for (int64_t k = 0; k < c1; ++k) rows[(k * s.H + h) * stride + lead + pb] = a[k];
      }
    }
    // Each plane (c, kj) written front to back.
    for (int64_t k = 0; k < c1; ++k)
      for (int kj = 0; kj < s.kw; ++kj) {
        uint64_t* dst = image + ((cw * 64 + k) * s.kw + kj) * s.Ps;
        const int64_t* wi = &word[kj * s.Wow];
        const int* bi = &bit[kj * s.Wow];
        for (int64_t u = 0; u < s.U; ++u)
          for (int64_t w = 0; w < s.Wow; ++w)
            for (int64_t l = 0; l < L; ++l) {
              const int64_t h = source[u * L + l];
              const uint64_t* row = &rows[(k * s.H + std::max<int64_t>(h, 0)) * stride];
              // (row[i + 1] << 1) << (63 - b): the next word's share, 0 when b == 0.
              const uint64_t v = (row[wi[w]] >> bi[w]) | ((row[wi[w] + 1] << 1) << (63 - bi[w]));
              dst[(u * s.Wow + w) * L + l] = h < 0 ? 0 : v;
            }
      }
  }
}

void slice_conv_blocks(const uint64_t* planes, const std::vector<SliceTaps>& taps,
                       const std::vector<SliceQuad>& quads, const int* quad_at, const int* shift,
                       const bool* negative, int P, const int64_t* threshold, int64_t O,
                       const SliceGeometry& s, uint64_t* out, int64_t t0, int64_t t1) {
  const int64_t blocks = (s.Lq + kSliceBlock - 1) / kSliceBlock, Opad = (O + 63) / 64 * 64;
  vbits count[kMaxSliceBits], acc[kMaxSliceBits];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / blocks, q0 = t % blocks * kSliceBlock;
    const int64_t q1 = std::min(s.Lq, q0 + kSliceBlock);
    const uint64_t* image = planes + n * s.image;
    for (int64_t o = 0; o < O; ++o) {
      if (quad_at[o] >= 0) {
        const SliceQuad& quad = quads[quad_at[o]];
        quad_dispatch(quad.width, image, quad, threshold + o, q0, q1, s.Lq,
                      out + (n * Opad + o) * s.Lq);
        o += 3;
        continue;
      }
      const SliceTaps& tp = taps[o];
      uint64_t* dst = out + (n * Opad + o) * s.Lq;
      // The width of every count, and of their signed, shifted sum made nonnegative: a subtracted
      // plane adds its complement ~count = (2^width - 1) - count, and the threshold that much more.
      // (The caller keeps every width + shift small enough for the sum to fit: see slice_fits.)
      uint64_t top = 0, below = 0;
      for (int p = 0; p < P; ++p) {
        const uint64_t full = ((uint64_t(1) << slice_width(tp.begin[p + 1] - tp.begin[p])) - 1)
                              << shift[p];
        top += full;
        if (negative[p]) below += full;
      }
      // The weighted sum lies in [-below, top]: clamping the threshold to one past either end
      // keeps every comparison and cannot overflow.
      const int64_t t_eff = std::clamp<int64_t>(threshold[o], -int64_t(below) - 1,
                                                int64_t(top) + 1) + int64_t(below);
      const int total = bit_length(top);
      // Thresholds no count can miss or reach: constant planes.
      if (t_eff <= 0 || t_eff > int64_t(top)) {
        const uint64_t fill = t_eff <= 0 ? ~uint64_t(0) : 0;
        std::fill(dst + q0, dst + q1, fill);
        continue;
      }
      const bool single = P == 1 && !negative[0] && shift[0] == 0;
      if (single && t_eff > tp.real[0]) {  // more than all the taps
        std::fill(dst + q0, dst + q1, uint64_t(0));
        continue;
      }
      for (int64_t q = q0; q < q1; q += kLanes) {
        vbits hit;
        if (single) {
          hit = slice_threshold(image, tp.offsets.data(), tp.begin[1], tp.real[0], q, t_eff,
                                valid_lanes(s, q), count);
        } else {
          for (int k = 0; k < total; ++k) acc[k] = vbits{};
          for (int p = 0; p < P; ++p) {
            const int w = slice_count(image, tp.offsets.data() + tp.begin[p],
                                      tp.begin[p + 1] - tp.begin[p], q, count);
            vbits carry = {};
            for (int k = shift[p]; k < total; ++k) {
              const int b = k - shift[p];
              const vbits v = b < w ? (negative[p] ? ~count[b] : count[b]) : vbits{};
              const vbits a = acc[k], u = a ^ v;
              acc[k] = u ^ carry;
              carry = (a & v) | (carry & u);
            }
          }
          hit = slice_at_least(acc, total, t_eff);
        }
        std::memcpy(dst + q, &hit, sizeof hit);
      }
    }
    for (int64_t o = O; o < Opad; ++o) {
      uint64_t* dst = out + (n * Opad + o) * s.Lq;
      std::fill(dst + q0, dst + q1, uint64_t(0));
    }
  }
}

void slice_unpack_rows(const uint64_t* sliced, uint64_t* out, const SliceGeometry& s, int64_t Ow,
                       int64_t t0, int64_t t1) {
  const int64_t Opad = Ow * 64;
  uint64_t a[64];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / s.Ho, i = t % s.Ho;
    uint64_t* orow = out + t * s.Wo * Ow;
    for (int64_t w = 0; w < s.Wow; ++w)
      for (int64_t ob = 0; ob < Ow; ++ob) {
        const uint64_t* src = sliced + (n * Opad + ob * 64) * s.Lq + slice_word(s, i, w);
        for (int k = 0; k < 64; ++k) a[k] = src[k * s.Lq];
        transpose64(a);
        const int64_t j1 = std::min<int64_t>(64, s.Wo - w * 64);
        for (int64_t j = 0; j < j1; ++j) orow[(w * 64 + j) * Ow + ob] = a[j];
      }
  }
}

#define TROPFX_BOOLEAN_TYPES(X)                                                                   \
  X(bool) X(uint8_t) X(int8_t) X(int16_t) X(int32_t) X(int64_t) X(float) X(double)
#define TROPFX_PACK(T)                                                                             \
  template void pack_bits_rows<T>(const T*, uint64_t*, int64_t, int64_t, int64_t, int64_t, int64_t); \
  template void unpack_bits_rows<T>(const uint64_t*, T*, int64_t, int64_t, int64_t, int64_t,       \
                                      int64_t, int64_t);
TROPFX_BOOLEAN_TYPES(TROPFX_PACK)

}  // namespace tropfx
