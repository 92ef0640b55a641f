// A small CPU emulator for tropfx's CUDA kernels, so that their index math and semantics are
// tested bit for bit against the CPU kernels on machines without a GPU.
//
// kernels/cuda_build.py (build_emulation) rewrites each .cu file a little (a launch
// ``k<<<cfg>>>(args)`` becomes ``emu::launch(emu::Cfg{cfg}, k, args)``, ``__shared__`` becomes
// ``static``, dynamic shared memory a pointer) and compiles it as C++ with this header. A launch runs
// the blocks one after another; a block's threads are fibers (ucontext) on one host thread that
// switch at __syncthreads, in alternating orders. What it cannot see: races between threads of a
// block outside barriers, warps, misaligned vector accesses, the memory model and performance.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

#include "cuda_runtime_api.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
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
Ctx& ctx();         // the running thread's indices
void sync();        // __syncthreads
void* dyn_smem();   // the block's dynamic shared memory

struct Cfg {
  dim3 grid, block;
  size_t smem;
  Cfg(dim3 g, dim3 b, size_t s = 0, cudaStream_t = nullptr) : grid(g), block(b), smem(s) {}
};
void run(const Cfg& cfg, const std::function<void()>& body);

template <typename... P, typename... A>
void launch(const Cfg& cfg, void (*kernel)(P...), A&&... args) {
  run(cfg, [=]() { kernel(args...); });
}

}  // namespace emu

#define threadIdx (emu::ctx().thread_idx)
#define blockIdx (emu::ctx().block_idx)
#define blockDim (emu::ctx().block_dim)
#define gridDim (emu::ctx().grid_dim)

inline void __syncthreads() { emu::sync(); }
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
  const float old = *p;
  *p = old + v;
  return old;
}
