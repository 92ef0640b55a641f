// The emulator's runtime (see emu.h): device attributes, and blocks run as fibers.
#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "emu.h"

cudaError_t cudaGetLastError() { return cudaSuccess; }

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  const bool sms = attr == cudaDevAttrMultiProcessorCount;
  const char* env = std::getenv(sms ? "TROPFX_EMU_SMS" : "TROPFX_EMU_SMEM");
  *value = env != nullptr ? std::atoi(env) : (sms ? 4 : 227 * 1024);
  return cudaSuccess;
}

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    default: return "invalid configuration argument";
  }
}

namespace emu {
namespace {

constexpr size_t kStack = 256 * 1024;

struct Fiber {
  ucontext_t context;
  std::vector<char> stack;
  bool done = false;
  Ctx ctx;
};

std::vector<Fiber> fibers;
ucontext_t scheduler;
int current = -1;
Ctx host;
std::vector<char> shared;
const std::function<void()>* body = nullptr;

void trampoline() {
  (*body)();
  fibers[current].done = true;
  swapcontext(&fibers[current].context, &scheduler);
}

}  // namespace

Ctx& ctx() { return current >= 0 ? fibers[current].ctx : host; }

void* dyn_smem() { return shared.data(); }

void sync() { swapcontext(&fibers[current].context, &scheduler); }

void run(const Cfg& cfg, const std::function<void()>& kernel_body) {
  const unsigned threads = cfg.block.x * cfg.block.y * cfg.block.z;
  if (current >= 0 || threads == 0 || threads > 1024 || cfg.grid.x == 0 || cfg.grid.y == 0 ||
      cfg.grid.z == 0 || cfg.grid.y > 65535 || cfg.grid.z > 65535) {
    std::fprintf(stderr, "tropfx CUDA emulation: invalid launch\n");
    std::abort();
  }
  body = &kernel_body;
  fibers.resize(threads);
  for (Fiber& f : fibers) f.stack.resize(kStack);
  unsigned round = 0;
  for (unsigned bz = 0; bz < cfg.grid.z; ++bz)
    for (unsigned by = 0; by < cfg.grid.y; ++by)
      for (unsigned bx = 0; bx < cfg.grid.x; ++bx) {
        shared.assign(cfg.smem + 16, char(0x5a));  // not zero: real shared memory is not either
        for (unsigned t = 0; t < threads; ++t) {
          Fiber& f = fibers[t];
          f.done = false;
          f.ctx.thread_idx = dim3(t % cfg.block.x, t / cfg.block.x % cfg.block.y,
                                  t / (cfg.block.x * cfg.block.y));
          f.ctx.block_idx = dim3(bx, by, bz);
          f.ctx.block_dim = cfg.block;
          f.ctx.grid_dim = cfg.grid;
          getcontext(&f.context);
          f.context.uc_stack.ss_sp = f.stack.data();
          f.context.uc_stack.ss_size = kStack;
          f.context.uc_link = nullptr;
          makecontext(&f.context, trampoline, 0);
        }
        // Each round runs every live thread to its next barrier (or its end), in alternating
        // orders so that code relying on thread order between barriers shows.
        for (bool live = true; live; ++round) {
          live = false;
          for (unsigned i = 0; i < threads; ++i) {
            const unsigned t = round % 2 ? threads - 1 - i : i;
            if (fibers[t].done) continue;
            current = int(t);
            swapcontext(&scheduler, &fibers[t].context);
            current = -1;
            live = true;
          }
        }
      }
  body = nullptr;
}

}  // namespace emu
