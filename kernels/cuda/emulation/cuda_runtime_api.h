// CPU emulation of the CUDA runtime (see emu.h): the subset of the runtime API that tropfx's
// kernels and binding use, on the host. Not a CUDA installation: only for kernels/cuda_build.py's
// build_emulation().
#pragma once

#include <cstddef>
#include <cstdint>

struct CUstream_st;
typedef CUstream_st* cudaStream_t;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchOutOfResources = 701
};
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

// The last launch's error, reset by the call (as CUDA's, for errors that are not sticky).
cudaError_t cudaGetLastError();
cudaError_t cudaGetDevice(int* device);
// TROPFX_EMU_SMS / TROPFX_EMU_SMEM override the emulated device (4 SMs, 227 KiB opt-in).
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
const char* cudaGetErrorString(cudaError_t err);
