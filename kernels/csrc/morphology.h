// Morphological dilation (max-plus) and erosion (min-plus) of (N, C, H, W) inputs by a
// structuring element (SE): per channel (C, kh, kw), or full (O, C, kh, kw). Torch-free.
//
// Semantics (tropfx.nn.morphology, matched bit for bit): windows as in max pooling (stride,
// padding, dilation, ceil_mode); padding is -inf for dilation and +inf for erosion;
//   dilation: y = max over the window of x + w,   erosion: y = min over the window of x - w,
// the first extreme element winning in window order (input channel, then kernel row-major), a NaN
// winning (the first one). The argmax is that window position q = (c * kh + ki) * kw + kj (c = 0
// per channel); the backward sends the gradient to the input element there, unless it is padding,
// and to the SE entry.
//
// Each (sample, channel) plane is first copied into a padded buffer (the copy also finds NaN and
// the infinities that can make NaN: such planes use NaN-aware comparisons, others plain ordered
// ones). Outputs are vectorized along the row, several vectors at a time. A flat channel (every SE
// entry equal and finite) is reduced separably: rows over kw, then columns over kh, each keeping
// the first extreme; that is the same first element in row-major window order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ranges.h"
#include "semantics.h"
#include "simd.h"

namespace tropfx {

template <typename T>
struct MorphArgs {
  const T* x;    // (N, C, H, W)
  const T* w;    // (C, kh, kw) or (O, C, kh, kw)
  T* y;          // (N, O, Ho, Wo)
  int32_t* arg;  // (N, O, Ho, Wo) window positions, or nullptr
  int64_t N, C, H, W, O, Ho, Wo;
  int kh, kw, sh, sw, ph, pw, dh, dw;
  bool full, erode;
};

constexpr int kMorphVectors = 4;  // output vectors per step (independent accumulators)

// Geometry of a padded plane: rows [0, rows) and a row pitch covering every vector load.
struct PaddedPlane {
  int64_t rows, pitch, wo_round;

  template <typename T>
  static PaddedPlane of(const MorphArgs<T>& a) {
    constexpr int G = kMorphVectors * Simd<T>::L;
    PaddedPlane p;
    p.rows = (a.Ho - 1) * a.sh + int64_t(a.kh - 1) * a.dh + 1;
    p.wo_round = (a.Wo + G - 1) / G * G;
    p.pitch = (p.wo_round - 1) * a.sw + int64_t(a.kw - 1) * a.dw + 1;
    return p;
  }
  int64_t size() const { return rows * pitch; }
};

// Copy plane ``src`` (H, W) into ``dst`` with the padding value around it; returns whether a value
// that can make NaN was copied (see semantics.h).
template <typename T>
bool pad_plane(const MorphArgs<T>& a, const PaddedPlane& g, const T* src, T* dst) {
  const T fill = a.erode ? kInf<T> : -kInf<T>;
  bool spoiled = false;
  for (int64_t r = 0; r < g.rows; ++r) {
    T* d = dst + r * g.pitch;
    const int64_t h = r - a.ph;
    if (h < 0 || h >= a.H) {
      std::fill(d, d + g.pitch, fill);
      continue;
    }
    const T* s = src + h * a.W;
    const int64_t c0 = std::min<int64_t>(a.pw, g.pitch);
    const int64_t c1 = std::min<int64_t>(a.pw + a.W, g.pitch);
    std::fill(d, d + c0, fill);
    for (int64_t c = c0; c < c1; ++c) {
      const T v = s[c - a.pw];
      spoiled |= a.erode ? spoils_min(v) : spoils_max(v);
      d[c] = v;
    }
    std::fill(d + std::max(c0, c1), d + g.pitch, fill);
  }
  return spoiled;
}

// Whether every SE entry is usable by the fast paths (no NaN, no +inf).
template <typename T>
bool se_clean(const T* w, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (spoils_max(w[i])) return false;
  return true;
}

template <bool Erode, bool NanAware, typename V>
inline __attribute__((always_inline)) auto morph_better(V v, V best) {
  if constexpr (NanAware)
    return Erode ? (~(v >= best) & (best == best)) : (~(v <= best) & (best == best));
  else
    return Erode ? (v < best) : (v > best);
}

template <typename V, typename T>
inline __attribute__((always_inline)) V load_strided(const T* p, int stride) {
  if (stride == 1) return loadu<V>(p);
  V v;
  for (int l = 0; l < int(sizeof(V) / sizeof(v[0])); ++l) v[l] = p[int64_t(l) * stride];
  return v;
}

template <typename T, typename M>
inline void store_lanes(T* y, int32_t* arg, int64_t j, int64_t count, const typename Simd<T>::V& v,
                        const M& a) {
  constexpr int L = Simd<T>::L;
  if (count >= L) {
    storeu(y + j, v);
  } else {
    for (int64_t l = 0; l < count; ++l) y[j + l] = v[l];
  }
  if (arg != nullptr)
    for (int64_t l = 0; l < std::min<int64_t>(count, L); ++l) arg[j + l] = int32_t(a[l]);
}

// Direct reduction of one padded plane by one per-channel SE ``w`` (K entries).
template <typename T, bool Erode, bool NanAware, bool Arg>
void morph_plane_direct(const MorphArgs<T>& a, const PaddedPlane& g, const T* P, const T* w, T* y,
                        int32_t* arg) {
  using S = Simd<T>;
  using V = typename S::V;
  using M = typename S::M;
  constexpr int L = S::L, G = kMorphVectors;
  const int K = a.kh * a.kw;
  std::vector<int64_t> off(K);
  for (int q = 0; q < K; ++q) off[q] = int64_t(q / a.kw) * a.dh * g.pitch + int64_t(q % a.kw) * a.dw;
  for (int64_t i = 0; i < a.Ho; ++i) {
    const T* row = P + i * a.sh * g.pitch;
    for (int64_t j0 = 0; j0 < a.Wo; j0 += G * L) {
      const T* base = row + j0 * a.sw;
      V best[G];
      M am[G];
      const V w0 = splat<V>(w[0]);
      for (int u = 0; u < G; ++u) {
        const V x = load_strided<V>(base + int64_t(u) * L * a.sw, a.sw);
        best[u] = Erode ? x - w0 : x + w0;
        am[u] = splat<M>(0);
      }
      for (int q = 1; q < K; ++q) {
        const V wq = splat<V>(w[q]);
        const M qv = splat<M>(q);
        for (int u = 0; u < G; ++u) {
          const V x = load_strided<V>(base + off[q] + int64_t(u) * L * a.sw, a.sw);
          const V v = Erode ? x - wq : x + wq;
          const auto m = morph_better<Erode, NanAware>(v, best[u]);
          best[u] = m ? v : best[u];
          if constexpr (Arg) am[u] = m ? qv : am[u];
        }
      }
      for (int u = 0; u < G; ++u) {
        const int64_t j = j0 + int64_t(u) * L;
        if (j >= a.Wo) break;
        store_lanes<T>(y + i * a.Wo, Arg ? arg + i * a.Wo : nullptr, j, a.Wo - j, best[u], am[u]);
      }
    }
  }
}

// Separable reduction of a clean padded plane by a flat SE of value c: rows, then columns.
template <typename T, bool Erode, bool Arg>
void morph_plane_flat(const MorphArgs<T>& a, const PaddedPlane& g, const T* P, T c, T* y,
                      int32_t* arg, std::vector<T>& rbuf, std::vector<int32_t>& rarg) {
  using S = Simd<T>;
  using V = typename S::V;
  using M = typename S::M;
  constexpr int L = S::L, G = kMorphVectors;
  const int64_t wr = g.wo_round;
  rbuf.resize(g.rows * wr);
  rarg.resize(Arg ? g.rows * wr : 0);
  const V cv = splat<V>(c);
  // Rows: R[r, j] = the first extreme of x[r, j * sw + kj * dw] +- c over kj, and its kj.
  for (int64_t r = 0; r < g.rows; ++r) {
    const T* row = P + r * g.pitch;
    for (int64_t j0 = 0; j0 < wr; j0 += G * L) {
      V best[G];
      M am[G];
      for (int u = 0; u < G; ++u) {
        const V x = load_strided<V>(row + (j0 + int64_t(u) * L) * a.sw, a.sw);
        best[u] = Erode ? x - cv : x + cv;
        am[u] = splat<M>(0);
      }
      for (int kj = 1; kj < a.kw; ++kj) {
        const M qv = splat<M>(kj);
        for (int u = 0; u < G; ++u) {
          const V x = load_strided<V>(row + (j0 + int64_t(u) * L) * a.sw + int64_t(kj) * a.dw, a.sw);
          const V v = Erode ? x - cv : x + cv;
          const auto m = morph_better<Erode, false>(v, best[u]);
          best[u] = m ? v : best[u];
          if constexpr (Arg) am[u] = m ? qv : am[u];
        }
      }
      for (int u = 0; u < G; ++u) {
        storeu(rbuf.data() + r * wr + j0 + u * L, best[u]);
        if constexpr (Arg)
          for (int l = 0; l < L; ++l) rarg[r * wr + j0 + u * L + l] = int32_t(am[u][l]);
      }
    }
  }
  // Columns: the first extreme of R over ki; the window position is ki * kw + kj.
  for (int64_t i = 0; i < a.Ho; ++i) {
    for (int64_t j0 = 0; j0 < a.Wo; j0 += G * L) {
      V best[G];
      M am[G];
      const int64_t r0 = i * a.sh;
      for (int u = 0; u < G; ++u) {
        best[u] = loadu<V>(rbuf.data() + r0 * wr + j0 + u * L);
        if constexpr (Arg) {
          for (int l = 0; l < L; ++l) am[u][l] = rarg[r0 * wr + j0 + u * L + l];
        } else {
          am[u] = splat<M>(0);
        }
      }
      for (int ki = 1; ki < a.kh; ++ki) {
        const int64_t r = r0 + int64_t(ki) * a.dh;
        for (int u = 0; u < G; ++u) {
          const V v = loadu<V>(rbuf.data() + r * wr + j0 + u * L);
          const auto m = morph_better<Erode, false>(v, best[u]);
          best[u] = m ? v : best[u];
          if constexpr (Arg) {
            M q;
            for (int l = 0; l < L; ++l) q[l] = rarg[r * wr + j0 + u * L + l] + ki * a.kw;
            am[u] = m ? q : am[u];
          }
        }
      }
      for (int u = 0; u < G; ++u) {
        const int64_t j = j0 + int64_t(u) * L;
        if (j >= a.Wo) break;
        store_lanes<T>(y + i * a.Wo, Arg ? arg + i * a.Wo : nullptr, j, a.Wo - j, best[u], am[u]);
      }
    }
  }
}

// Whether channel c of a per-channel SE is flat: every entry equal and finite. Returns its value.
template <typename T>
bool flat_channel(const T* w, int K, T& value) {
  for (int q = 1; q < K; ++q)
    if (!(w[q] == w[0])) return false;
  value = w[0];
  return w[0] - w[0] == T(0);  // finite
}

template <typename T, bool Erode, bool Arg>
void morph_plane(const MorphArgs<T>& a, const PaddedPlane& g, const T* P, bool spoiled, bool clean_se,
                 const T* w, T* y, int32_t* arg, std::vector<T>& rbuf, std::vector<int32_t>& rarg) {
  const int K = a.kh * a.kw;
  T c;
  if (spoiled || !clean_se)
    morph_plane_direct<T, Erode, true, Arg>(a, g, P, w, y, arg);
  else if (K > 1 && flat_channel(w, K, c))
    morph_plane_flat<T, Erode, Arg>(a, g, P, c, y, arg, rbuf, rarg);
  else
    morph_plane_direct<T, Erode, false, Arg>(a, g, P, w, y, arg);
}

// Per-channel forward of planes [t0, t1) (t = n * C + c).
template <typename T>
void morph_forward_channels(const MorphArgs<T>& a, bool clean_se, int64_t t0, int64_t t1) {
  const PaddedPlane g = PaddedPlane::of(a);
  std::vector<T> P(g.size()), rbuf;
  std::vector<int32_t> rarg;
  const int K = a.kh * a.kw;
  const int64_t plane = a.Ho * a.Wo;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t c = t % a.C;
    const bool spoiled = pad_plane(a, g, a.x + t * a.H * a.W, P.data());
    const T* w = a.w + c * K;
    T* y = a.y + t * plane;
    int32_t* arg = a.arg != nullptr ? a.arg + t * plane : nullptr;
    if (a.erode) {
      if (arg) morph_plane<T, true, true>(a, g, P.data(), spoiled, clean_se, w, y, arg, rbuf, rarg);
      else morph_plane<T, true, false>(a, g, P.data(), spoiled, clean_se, w, y, arg, rbuf, rarg);
    } else {
      if (arg) morph_plane<T, false, true>(a, g, P.data(), spoiled, clean_se, w, y, arg, rbuf, rarg);
      else morph_plane<T, false, false>(a, g, P.data(), spoiled, clean_se, w, y, arg, rbuf, rarg);
    }
  }
}

// Full form, step 1: pad planes [t0, t1) into ``padded`` (N * C planes of PaddedPlane::size()),
// recording which planes can make NaN.
template <typename T>
void morph_pad_planes(const MorphArgs<T>& a, T* padded, uint8_t* spoiled, int64_t t0, int64_t t1) {
  const PaddedPlane g = PaddedPlane::of(a);
  for (int64_t t = t0; t < t1; ++t)
    spoiled[t] = pad_plane(a, g, a.x + t * a.H * a.W, padded + t * g.size());
}

constexpr int kFullChannels = 4;  // output channels per register tile (full form)

// Full form, step 2: output rows of tasks [t0, t1), t = (n * tiles + tile) * Ho + i, a tile being
// kFullChannels output channels; ``wt`` is the SE transposed to (C, K, tiles * kFullChannels),
// zero past O, so that the channels of a tile are adjacent.
template <typename T, bool Erode, bool NanAware, bool Arg>
void morph_full_rows(const MorphArgs<T>& a, const T* padded, const T* wt, int64_t t0, int64_t t1) {
  using S = Simd<T>;
  using V = typename S::V;
  using M = typename S::M;
  constexpr int L = S::L, OT = kFullChannels;
  const PaddedPlane g = PaddedPlane::of(a);
  const int K = a.kh * a.kw;
  const int64_t tiles = (a.O + OT - 1) / OT, opad = tiles * OT;
  std::vector<int64_t> off(K);
  for (int q = 0; q < K; ++q) off[q] = int64_t(q / a.kw) * a.dh * g.pitch + int64_t(q % a.kw) * a.dw;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t i = t % a.Ho, tile = (t / a.Ho) % tiles, n = t / a.Ho / tiles;
    const int64_t o0 = tile * OT;
    const int ot = int(std::min<int64_t>(OT, a.O - o0));
    const T* xn = padded + n * a.C * g.size() + i * a.sh * g.pitch;
    for (int64_t j0 = 0; j0 < a.Wo; j0 += L) {
      V best[OT];
      M am[OT];
      {  // the first window element initializes the extremes
        const V x = load_strided<V>(xn + j0 * a.sw, a.sw);
        for (int u = 0; u < OT; ++u) {
          const V wv = splat<V>(wt[o0 + u]);
          best[u] = Erode ? x - wv : x + wv;
          am[u] = splat<M>(0);
        }
      }
      for (int64_t c = 0; c < a.C; ++c) {
        const T* base = xn + c * g.size() + j0 * a.sw;
        const T* wc = wt + c * K * opad + o0;
        for (int q = (c == 0 ? 1 : 0); q < K; ++q) {
          const V x = load_strided<V>(base + off[q], a.sw);
          const M qv = splat<M>(int32_t(c * K + q));
          for (int u = 0; u < OT; ++u) {
            const V wv = splat<V>(wc[int64_t(q) * opad + u]);
            const V v = Erode ? x - wv : x + wv;
            const auto m = morph_better<Erode, NanAware>(v, best[u]);
            best[u] = m ? v : best[u];
            if constexpr (Arg) am[u] = m ? qv : am[u];
          }
        }
      }
      for (int u = 0; u < ot; ++u) {
        const int64_t plane = ((n * a.O) + o0 + u) * a.Ho * a.Wo + i * a.Wo;
        store_lanes<T>(a.y + plane, Arg ? a.arg + plane : nullptr, j0, a.Wo - j0, best[u], am[u]);
      }
    }
  }
}

// Full form, step 2 for tasks [t0, t1): each output row takes the NaN-aware path when its
// sample holds a value that can make NaN (or the SE does).
template <typename T>
void morph_forward_full(const MorphArgs<T>& a, const T* padded, const T* wt, const uint8_t* spoiled,
                        bool clean_se, int64_t t0, int64_t t1) {
  const int64_t tiles = (a.O + kFullChannels - 1) / kFullChannels;
  const bool arg = a.arg != nullptr;
  for (int64_t t = t0; t < t1; ++t) {
    const bool nan = !clean_se || spoiled[t / a.Ho / tiles];
    const int key = (a.erode ? 4 : 0) | (nan ? 2 : 0) | (arg ? 1 : 0);
    switch (key) {
      case 0: morph_full_rows<T, false, false, false>(a, padded, wt, t, t + 1); break;
      case 1: morph_full_rows<T, false, false, true>(a, padded, wt, t, t + 1); break;
      case 2: morph_full_rows<T, false, true, false>(a, padded, wt, t, t + 1); break;
      case 3: morph_full_rows<T, false, true, true>(a, padded, wt, t, t + 1); break;
      case 4: morph_full_rows<T, true, false, false>(a, padded, wt, t, t + 1); break;
      case 5: morph_full_rows<T, true, false, true>(a, padded, wt, t, t + 1); break;
      case 6: morph_full_rows<T, true, true, false>(a, padded, wt, t, t + 1); break;
      default: morph_full_rows<T, true, true, true>(a, padded, wt, t, t + 1); break;
    }
  }
}

// Backward, per channel: channels [c0, c1), samples and outputs in order. grad_x and grad_w are
// zero-filled; the gradient of padding is dropped, the SE entry still gets it (as in the reference).
// The first pass of each backward (this one; morph_backward_full_input) returns false if an argmax
// is outside the window ([0, kh * kw) per channel, [0, C * kh * kw) full): it is skipped (nothing is
// written out of bounds) and the binding raises, naming the value. Here each plane's argmax is
// checked by a vectorized min / max just before the loop reads it (in cache; measured faster than
// a compare in the loop, which cost ~5 %); morph_backward_full_input compares in its loop (a plane
// scan there measured 2x slower, for a reason not found).
template <typename T>
bool morph_backward_channels(const MorphArgs<T>& a, const T* g, T* gx, T* gw, int64_t c0,
                             int64_t c1) {
  const int K = a.kh * a.kw;
  bool ok = true;
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t n = 0; n < a.N; ++n) {
      const int64_t plane = (n * a.C + c) * a.Ho * a.Wo;
      if (a.Ho * a.Wo > 0) {  // the plane's argmax, checked while it is in cache
        const MinMax m = min_max(a.arg + plane, a.Ho * a.Wo);
        if (m.min < 0 || m.max >= K) {
          ok = false;
          continue;
        }
      }
      T* gxp = gx + (n * a.C + c) * a.H * a.W;
      for (int64_t i = 0; i < a.Ho; ++i)
        for (int64_t j = 0; j < a.Wo; ++j) {
          const int64_t at = plane + i * a.Wo + j;
          const int q = a.arg[at];
          const T v = g[at];
          const int64_t h = i * a.sh + int64_t(q / a.kw) * a.dh - a.ph;
          const int64_t x = j * a.sw + int64_t(q % a.kw) * a.dw - a.pw;
          if (h >= 0 && h < a.H && x >= 0 && x < a.W) gxp[h * a.W + x] += v;
          gw[c * K + q] += a.erode ? -v : v;
        }
    }
  }
  return ok;
}

// Backward, full form, grad_x of samples [n0, n1) (output channels, then positions, in order).
template <typename T>
bool morph_backward_full_input(const MorphArgs<T>& a, const T* g, T* gx, int64_t n0, int64_t n1) {
  const int K = a.kh * a.kw;
  const int64_t window = a.C * K;
  bool ok = true;
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t o = 0; o < a.O; ++o) {
      const int64_t plane = (n * a.O + o) * a.Ho * a.Wo;
      for (int64_t i = 0; i < a.Ho; ++i)
        for (int64_t j = 0; j < a.Wo; ++j) {
          const int64_t at = plane + i * a.Wo + j;
          const int32_t t = a.arg[at];
          if (uint64_t(int64_t(t)) >= uint64_t(window)) {
            ok = false;
            continue;
          }
          const int64_t c = t / K;
          const int q = t % K;
          const int64_t h = i * a.sh + int64_t(q / a.kw) * a.dh - a.ph;
          const int64_t x = j * a.sw + int64_t(q % a.kw) * a.dw - a.pw;
          if (h >= 0 && h < a.H && x >= 0 && x < a.W) gx[((n * a.C + c) * a.H + h) * a.W + x] += g[at];
        }
    }
  return ok;
}

// Backward, full form, grad_w of output channels [o0, o1) (samples, then positions, in order).
// argmax must be in [0, C * kh * kw): morph_backward_full_input, which runs first, has checked it.
template <typename T>
void morph_backward_full_weight(const MorphArgs<T>& a, const T* g, T* gw, int64_t o0, int64_t o1) {
  const int64_t per_o = a.C * a.kh * a.kw;
  for (int64_t o = o0; o < o1; ++o)
    for (int64_t n = 0; n < a.N; ++n) {
      const int64_t plane = (n * a.O + o) * a.Ho * a.Wo;
      for (int64_t p = 0; p < a.Ho * a.Wo; ++p) {
        const T v = g[plane + p];
        gw[o * per_o + a.arg[plane + p]] += a.erode ? -v : v;
      }
    }
}

// Explicit instantiations live in morphology.cpp (torch-free, compiled in parallel with the
// bindings); other translation units only declare them.
#define TROPFX_MORPHOLOGY_TEMPLATES(X, T)                                                          \
  X template bool se_clean<T>(const T*, int64_t);                                                  \
  X template void morph_forward_channels<T>(const MorphArgs<T>&, bool, int64_t, int64_t);          \
  X template void morph_pad_planes<T>(const MorphArgs<T>&, T*, uint8_t*, int64_t, int64_t);        \
  X template void morph_forward_full<T>(const MorphArgs<T>&, const T*, const T*, const uint8_t*,   \
                                        bool, int64_t, int64_t);                                   \
  X template bool morph_backward_channels<T>(const MorphArgs<T>&, const T*, T*, T*, int64_t,       \
                                             int64_t);                                             \
  X template bool morph_backward_full_input<T>(const MorphArgs<T>&, const T*, T*, int64_t,         \
                                               int64_t);                                           \
  X template void morph_backward_full_weight<T>(const MorphArgs<T>&, const T*, T*, int64_t,        \
                                                int64_t);

#if !defined(TROPFX_INSTANTIATE)
TROPFX_MORPHOLOGY_TEMPLATES(extern, float)
TROPFX_MORPHOLOGY_TEMPLATES(extern, double)
#endif

}  // namespace tropfx
