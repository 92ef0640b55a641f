// Device helpers shared by tropfx's CUDA kernels. Torch-free: plain CUDA C++ on raw pointers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../csrc/semantics.h"
#include "kernels.h"

namespace tropfx {
namespace cuda {

constexpr int kThreads = 256;  // threads per block of the elementwise and gather kernels

__device__ __forceinline__ float pos_inf() { return __int_as_float(0x7f800000); }
__device__ __forceinline__ float neg_inf() { return __int_as_float(static_cast<int>(0xff800000u)); }

// A last-resort device check (the bindings validate indices on the host first): a failed one traps,
// which aborts the kernel and poisons the CUDA context as a device-side assert would. Not assert():
// its __assertfail is a call, and the registers live across a call spilled on sm_90.
__device__ __forceinline__ void device_check(bool ok) {
  if (!ok) __trap();
}

// +-v: min-plus runs as the max-plus of negated operands (negation is exact).
__device__ __forceinline__ float signed_(float v, bool neg) { return neg ? -v : v; }

// torch.max's step (semantics.h, extreme_step) with the scan's stop folded in: a value replaces
// the current maximum when it is greater or NaN, unless the maximum is already NaN. Starting from
// best = -inf, arg = first index, a scan gives exactly torch.max (value and first index) of the
// sequence, including when every element is -inf.
__device__ __forceinline__ void max_step(float v, int32_t q, float& best, int32_t& arg) {
  if (!is_nan(best)) extreme_step<false>(v, q, best, arg);
}

__device__ __forceinline__ void min_step(float v, int32_t q, float& best, int32_t& arg) {
  if (!is_nan(best)) extreme_step<true>(v, q, best, arg);
}

template <typename T>
__host__ __device__ __forceinline__ T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Multiprocessors of the current device (cached per device), for sizing grid-stride launches.
int device_sms();
// The dynamic shared memory a block may opt in to on the current device.
int device_smem_optin();

// Blocks for a grid-stride loop over n items.
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t want = ceil_div<int64_t>(n, threads);
  const int64_t cap = int64_t(device_sms()) * 32;
  return unsigned(want < cap ? (want > 0 ? want : 1) : cap);
}

// y = -y over n floats (min-plus backward: the reference negates its max-plus gradients).
cudaError_t negate(float* y, int64_t n, cudaStream_t stream);

}  // namespace cuda
}  // namespace tropfx
