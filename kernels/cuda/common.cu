// Host helpers shared by the kernels (device queries) and the negation used by min-plus backward.
#include "common.cuh"

namespace tropfx {
namespace cuda {

namespace {

constexpr int kMaxDevices = 64;

int cached_attribute(cudaDeviceAttr attr, int (&cache)[kMaxDevices], int fallback) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return fallback;
  int v = cache[dev];  // benign race: every writer stores the same value
  if (v > 0) return v;
  if (cudaDeviceGetAttribute(&v, attr, dev) != cudaSuccess || v <= 0) return fallback;
  cache[dev] = v;
  return v;
}

int sms_cache[kMaxDevices];
int smem_cache[kMaxDevices];

__global__ void negate_kernel(float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = -y[i];
}

}  // namespace

int device_sms() { return cached_attribute(cudaDevAttrMultiProcessorCount, sms_cache, 80); }

int device_smem_optin() {
  return cached_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, smem_cache, 48 * 1024);
}

cudaError_t negate(float* y, int64_t n, cudaStream_t stream) {
  if (n <= 0 || y == nullptr) return cudaSuccess;
  negate_kernel<<<grid_for(n), kThreads, 0, stream>>>(y, n);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace tropfx
