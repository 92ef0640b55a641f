// Deliberately broken tiny kernels (and their fixed twins) for the CUDA emulator's own tests
// (tests/test_emulator.py). Emulator only: the launches use host memory. Each case is a program
// mode, ``emulator_cases CASE``; it prints its outputs, or the launch's error, and exits 0 -- unless
// the emulator aborts it, which is what the broken cases expect.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr int kN = 64;

// --- barrier divergence: a thread skips one __syncthreads --------------------------------------
__global__ void divergence_kernel(int* out, int skip) {
  __shared__ int s[kN];
  const int t = int(threadIdx.x);
  for (int i = 0; i < 4; ++i) {
    if (t == skip && i == 1) continue;  // broken when skip is a thread: it passes 3 barriers, not 4
    s[t] = i;
    __syncthreads();
  }
  out[t] = s[t];
}

// --- static shared memory read before it is written ----------------------------------------------
// Block 0 writes its copy; block 1 reads its own copy without writing it.
__global__ void uninit_kernel(float* out) {
  __shared__ float s[kN];
  const int t = int(threadIdx.x);
  if (blockIdx.x == 0) s[t] = 1.f;
  __syncthreads();
  out[blockIdx.x * kN + t] = s[t];
}

// --- dynamic shared memory above 48 KiB -----------------------------------------------------------
__global__ void big_smem_kernel(float* out, int n) {
  extern __shared__ float d[];
  for (int i = int(threadIdx.x); i < n; i += int(blockDim.x)) d[i] = float(i);
  __syncthreads();
  if (threadIdx.x == 0) out[0] = d[n - 1];
}

// --- a race: two threads write the same shared word ----------------------------------------------
__global__ void race_kernel(int* out, int writers, int barrier) {
  __shared__ int s;
  const int t = int(threadIdx.x);
  if (t < writers) s = t + 1;  // writers > 1: a write-write race
  if (barrier) __syncthreads();
  out[t] = s;
}

// A read-write race (thread 0 writes, the others read with no barrier): the result depends on the
// order the threads run in, which the emulator draws from TROPFX_EMU_SEED.
__global__ void order_kernel(int* out) {
  __shared__ int s;
  const int t = int(threadIdx.x);
  if (t == 0) s = 1;
  out[t] = s;
}

// --- launch bounds --------------------------------------------------------------------------------
__global__ void __launch_bounds__(32) bounded_kernel(int* out) { out[threadIdx.x] = 7; }

// --- a failed device check ------------------------------------------------------------------------
__global__ void trap_kernel(const int* index, int* out, int n) {
  const int i = index[threadIdx.x];
  if (i < 0 || i >= n) __trap();
  out[threadIdx.x] = i;
}

// --- an overrun of dynamic shared memory (AddressSanitizer's to find) ----------------------------
__global__ void overrun_kernel(float* out) {
  extern __shared__ float d[];
  d[threadIdx.x] = 1.f;
  __syncthreads();
  out[threadIdx.x] = d[threadIdx.x + 1];  // the last thread reads one past the end
}

template <typename T>
void print(const std::vector<T>& v) {
  for (const T& x : v) std::printf("%s ", std::to_string(x).c_str());
  std::printf("\n");
}

int report_error() {
  const cudaError_t err = cudaGetLastError();
  std::printf("error: %s\n", cudaGetErrorString(err));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::string c = argv[1];
  if (c == "divergence" || c == "divergence_fixed") {
    std::vector<int> out(kN);
    divergence_kernel<<<1, kN>>>(out.data(), c == "divergence" ? 5 : -1);
    print(out);
    return report_error();
  }
  if (c == "uninit") {
    std::vector<float> out(2 * kN);
    uninit_kernel<<<2, kN>>>(out.data());
    print(out);
    return report_error();
  }
  if (c == "smem" || c == "smem_optin") {
    const int n = 16 * 1024;  // 64 KiB of floats
    std::vector<float> out(1, -1.f);
    if (c == "smem_optin")
      std::printf("attribute: %s\n",
                  cudaGetErrorString(cudaFuncSetAttribute(
                      big_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n * 4)));
    big_smem_kernel<<<1, 128, n * sizeof(float)>>>(out.data(), n);
    print(out);
    return report_error();
  }
  if (c == "race" || c == "race_nobarrier" || c == "race_fixed") {
    std::vector<int> out(kN);
    race_kernel<<<1, kN>>>(out.data(), c == "race_fixed" ? 1 : 2, c == "race_nobarrier" ? 0 : 1);
    print(out);
    return report_error();
  }
  if (c == "order") {
    std::vector<int> out(kN);
    order_kernel<<<1, kN>>>(out.data());
    print(out);
    return report_error();
  }
  if (c == "bounds" || c == "bounds_fixed") {
    std::vector<int> out(kN, 0);
    bounded_kernel<<<1, c == "bounds" ? kN : 32>>>(out.data());
    print(out);
    return report_error();
  }
  if (c == "trap" || c == "trap_fixed") {
    std::vector<int> index(kN, 3), out(kN);
    if (c == "trap") index[17] = kN;
    trap_kernel<<<1, kN>>>(index.data(), out.data(), kN);
    print(out);
    return report_error();
  }
  if (c == "overrun") {
    std::vector<float> out(kN);
    overrun_kernel<<<1, kN, kN * sizeof(float)>>>(out.data());
    print(out);
    return report_error();
  }
  return 2;
}
