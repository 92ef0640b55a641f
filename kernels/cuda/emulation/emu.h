// A small CPU emulator for tropfx's CUDA kernels, so that their index math and semantics are
// tested bit for bit against the CPU kernels on machines without a GPU, and so that the mistakes a
// GPU punishes fail here too.
//
// kernels/cuda_build.py (build_emulation) rewrites each .cu file a little and compiles it as C++
// with this header:
//  * a launch ``k<<<cfg>>>(args)`` becomes ``emu::launch(emu::Cfg{cfg}, k, args)``;
//  * ``__shared__ T name[n];`` becomes ``auto& name = emu::shared<T[n], __LINE__>(align);`` (per-block
//    allocation) and ``extern __shared__ T name[];`` a pointer to the block's dynamic shared memory;
//  * ``__launch_bounds__(args) kernel(params) {`` becomes ``kernel(params) { emu::launch_bounds(args);``.
// A launch runs the blocks one after another; a block's threads are fibers (ucontext) on one host
// thread that run from barrier to barrier. What the emulator checks (runtime.cpp, each proven by a
// broken kernel in tests/test_emulator.py):
//  * barriers: every live thread of a block must wait at the same __syncthreads (same source line),
//    the same number of times; a thread that exits while others wait is divergence (abort);
//  * shared memory, static and dynamic, is fresh per block and poisoned (bytes 0xff: NaN floats,
//    -1 integers), each array its own heap block (an AddressSanitizer build sees overruns);
//  * two threads writing different values to the same shared byte between two barriers is a race
//    (abort; atomics excepted); the threads of a round run in a seeded random order
//    (TROPFX_EMU_SEED), so that results depending on the order change with the seed;
//  * dynamic shared memory above 48 KiB needs cudaFuncSetAttribute's opt-in (else the launch fails
//    with cudaErrorInvalidValue, as on a GPU), and static + dynamic must fit the limit;
//  * a block larger than the kernel's __launch_bounds__ fails to launch
//    (cudaErrorLaunchOutOfResources);
//  * __trap() (a failed device check) aborts, naming the block and thread.
// Failures inside a kernel abort the process with a message on stderr (a GPU would lose the
// context); launch failures are returned by cudaGetLastError. What it cannot see: warps (and
// intra-warp lockstep), read-write races (only through the thread order), misaligned vector
// accesses, the memory model and performance.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

#include "cuda_runtime_api.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)  // rewritten into emu::launch_bounds by build_emulation
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3() = default;
  dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(16) longlong2 {
  long long x, y;
};
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline int4 make_int4(int a, int b, int c, int d) { return {a, b, c, d}; }

namespace emu {

struct Ctx {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
};
Ctx& ctx();                              // the running thread's indices
void sync(const char* file, int line);   // __syncthreads at file:line
void* dyn_smem();                        // the block's dynamic shared memory
// The block's instance of one static __shared__ declaration (tag: unique per declaration).
void* shared_slot(const void* tag, size_t size, size_t align);
// Called by every thread first (the rewritten __launch_bounds__): the block must fit max_threads.
void launch_bounds(int max_threads, int min_blocks = 0);
// atomicAdd on shared memory is not a race: mark the bytes for the race check.
void atomic_access(const void* p, size_t size);

// Line: the declaration's (a kernel's declarations are on distinct lines of one file).
template <typename T, int Line>
T& shared(size_t align) {
  static const char tag = 0;  // one per declaration
  return *static_cast<T*>(shared_slot(&tag, sizeof(T), align > alignof(T) ? align : alignof(T)));
}

struct Cfg {
  dim3 grid, block;
  size_t smem;
  Cfg(dim3 g, dim3 b, size_t s = 0, cudaStream_t = nullptr) : grid(g), block(b), smem(s) {}
};
void run(const Cfg& cfg, const void* kernel, const std::function<void()>& body);
// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes).
cudaError_t set_max_dynamic_smem(const void* kernel, int bytes);

template <typename... P, typename... A>
void launch(const Cfg& cfg, void (*kernel)(P...), A&&... args) {
  run(cfg, reinterpret_cast<const void*>(kernel), [=]() { kernel(args...); });
}

}  // namespace emu

template <typename F>
cudaError_t cudaFuncSetAttribute(F kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value);
}

#define threadIdx (emu::ctx().thread_idx)
#define blockIdx (emu::ctx().block_idx)
#define blockDim (emu::ctx().block_dim)
#define gridDim (emu::ctx().grid_dim)

#define __syncthreads() emu::sync(__FILE__, __LINE__)
// A failed device check (common.cuh, device_check): on a GPU the kernel aborts and the context is
// lost; here the process aborts, naming the block and thread.
[[noreturn]] void __trap();

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline float __int_as_float(int v) {
  float f;
  std::memcpy(&f, &v, sizeof f);
  return f;
}
// Fibers never run concurrently: a plain read-modify-write is atomic here.
inline float atomicAdd(float* p, float v) {
  emu::atomic_access(p, sizeof *p);
  const float old = *p;
  *p = old + v;
  return old;
}
