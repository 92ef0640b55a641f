// Portable SIMD vocabulary for tropfx's CPU kernels: GCC / Clang vector extensions.
//
// Torch-free on purpose (STYLE.md, point 6): the CUDA kernels share the scalar semantics in
// semantics.h, and these headers compile without ATen. The vector width follows the target
// (-march=native: 64 bytes with AVX-512, 32 with AVX/AVX2, 16 otherwise); TROPFX_VEC_BYTES
// overrides it, which lets a machine without AVX-512 test the 64-byte code paths (the compiler
// splits each operation in two).
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

namespace tropfx {

#if defined(TROPFX_VEC_BYTES)
inline constexpr int kVecBytes = TROPFX_VEC_BYTES;
#elif defined(__AVX512F__)
inline constexpr int kVecBytes = 64;
#elif defined(__AVX__)
inline constexpr int kVecBytes = 32;
#else
inline constexpr int kVecBytes = 16;
#endif

template <typename T>
struct Simd;

// V: a vector of T; M: the integer vector a comparison of two V yields (-1 true, 0 false), also
// used for per-lane indices (argmax), since selecting with a mask needs equal lane widths.
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(kVecBytes)));
  typedef int32_t M __attribute__((vector_size(kVecBytes)));
  using Index = int32_t;
  static constexpr int L = kVecBytes / sizeof(float);
};

template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(kVecBytes)));
  typedef int64_t M __attribute__((vector_size(kVecBytes)));
  using Index = int64_t;
  static constexpr int L = kVecBytes / sizeof(double);
};

template <typename V>
inline __attribute__((always_inline)) V loadu(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
inline __attribute__((always_inline)) void storeu(void* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

template <typename V, typename S, std::size_t... I>
inline __attribute__((always_inline)) V splat_(S s, std::index_sequence<I...>) {
  return V{((void)I, s)...};
}

// Every lane = s, bit for bit (``s + V{}`` would turn -0.0 into +0.0); one broadcast instruction.
template <typename V, typename S>
inline __attribute__((always_inline)) V splat(S s) {
  using E = std::remove_reference_t<decltype(std::declval<V>()[0])>;
  return splat_<V>(E(s), std::make_index_sequence<sizeof(V) / sizeof(E)>{});
}

template <typename T>
inline constexpr T kInf = std::numeric_limits<T>::infinity();

}  // namespace tropfx
