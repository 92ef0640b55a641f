// The emulator's runtime (see emu.h): device attributes, launch checks, and blocks run as fibers
// with barrier, shared-memory and race checks.
#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <new>
#include <random>
#include <unordered_map>
#include <vector>

#include "emu.h"

#if defined(__SANITIZE_ADDRESS__)
#define TROPFX_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TROPFX_EMU_ASAN 1
#endif
#endif
#ifdef TROPFX_EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

namespace {

cudaError_t last_error = cudaSuccess;

int env_int(const char* name, int fallback) {
  const char* env = std::getenv(name);
  return env != nullptr && *env != '\0' ? std::atoi(env) : fallback;
}

}  // namespace

cudaError_t cudaGetLastError() {
  const cudaError_t err = last_error;
  last_error = cudaSuccess;
  return err;
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  const bool sms = attr == cudaDevAttrMultiProcessorCount;
  *value = env_int(sms ? "TROPFX_EMU_SMS" : "TROPFX_EMU_SMEM", sms ? 4 : 227 * 1024);
  return cudaSuccess;
}

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    default: return "invalid configuration argument";
  }
}

namespace emu {
namespace {

constexpr size_t kStack = 256 * 1024;
constexpr size_t kDefaultSmem = 48 * 1024;  // without cudaFuncSetAttribute's opt-in
constexpr unsigned char kPoison = 0xff;     // NaN as a float, -1 as an integer

struct Fiber {
  ucontext_t context;
  std::vector<char> stack;
  bool done = false;
  unsigned barriers = 0;   // __syncthreads passed
  const char* file = "";   // where it waits
  int line = 0;
  Ctx ctx;
#ifdef TROPFX_EMU_ASAN
  void* fake_stack = nullptr;
#endif
};

// One shared-memory array of the running block: the dynamic one, or a static __shared__
// declaration. Its own heap block, so that an AddressSanitizer build sees overruns.
struct Region {
  const void* tag;  // nullptr: dynamic shared memory
  size_t size, align;
  char* data;
  std::vector<char> shadow;   // the content when the last thread stopped (race check)
  std::vector<int> writer;    // the thread that changed each byte since the last barrier, or -1
  std::vector<char> atomic;   // the byte was changed by an atomic since the last barrier

  Region(const void* t, size_t n, size_t align_)
      : tag(t), size(n), align(align_),
        data(static_cast<char*>(::operator new(n > 0 ? n : 1, std::align_val_t(align_)))),
        shadow(n), writer(n, -1), atomic(n, 0) {
    poison();
  }
  ~Region() { ::operator delete(data, std::align_val_t(align)); }
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
  void poison() {
    if (size == 0) return;
    std::memset(data, kPoison, size);
    std::memset(shadow.data(), kPoison, size);
  }
};

std::vector<Fiber> fibers;
ucontext_t scheduler;
int current = -1;
Ctx host;
const std::function<void()>* body = nullptr;
unsigned block_threads = 0;
bool abandoned = false;               // a launch check failed inside the kernel: stop the launch
size_t smem_limit = kDefaultSmem;     // static + dynamic, this launch
std::vector<std::unique_ptr<Region>> regions;  // [0]: dynamic
std::vector<std::pair<Region*, size_t>> touched;  // bytes to reset at the next barrier
std::unordered_map<const void*, int> max_dynamic;  // cudaFuncSetAttribute
bool race_check = true;
uint64_t launches = 0;

#ifdef TROPFX_EMU_ASAN
const void* scheduler_stack = nullptr;
size_t scheduler_stack_size = 0;
#endif

[[noreturn]] void fail(const char* what) {
  const Ctx& c = current >= 0 ? fibers[current].ctx : host;
  std::fprintf(stderr, "tropfx CUDA emulation: %s (block (%u, %u, %u), thread (%u, %u, %u))\n", what,
               c.block_idx.x, c.block_idx.y, c.block_idx.z, c.thread_idx.x, c.thread_idx.y,
               c.thread_idx.z);
  std::fflush(stderr);
  std::abort();
}

// Fiber -> scheduler (finishing: the fiber never resumes).
void to_scheduler(bool finishing) {
  Fiber& f = fibers[current];
#ifdef TROPFX_EMU_ASAN
  __sanitizer_start_switch_fiber(finishing ? nullptr : &f.fake_stack, scheduler_stack,
                                 scheduler_stack_size);
#endif
  (void)finishing;
  swapcontext(&f.context, &scheduler);
#ifdef TROPFX_EMU_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, &scheduler_stack, &scheduler_stack_size);
#endif
}

// Scheduler -> fiber t, until it waits at a barrier, finishes or abandons the launch.
void resume(unsigned t) {
  current = int(t);
#ifdef TROPFX_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, fibers[t].stack.data(), kStack);
#endif
  swapcontext(&scheduler, &fibers[t].context);
#ifdef TROPFX_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  current = -1;
}

void trampoline() {
#ifdef TROPFX_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &scheduler_stack, &scheduler_stack_size);
#endif
  (*body)();
  fibers[current].done = true;
  to_scheduler(true);
}

// The bytes thread t changed since it last ran: a byte another thread changed since the last
// barrier is a write-write race (unless both were atomics). Writes of the value already there
// are invisible here, and harmless.
void check_writes(unsigned t) {
  constexpr size_t kChunk = 64;
  for (auto& region : regions) {
    Region& r = *region;
    for (size_t at = 0; at < r.size; at += kChunk) {
      const size_t n = std::min(kChunk, r.size - at);
      if (std::memcmp(r.data + at, r.shadow.data() + at, n) == 0) continue;
      for (size_t b = at; b < at + n; ++b) {
        if (r.data[b] == r.shadow[b]) continue;
        const int other = r.writer[b];
        if (race_check && other >= 0 && other != int(t) && !r.atomic[b]) {
          char what[256];
          const Ctx& o = fibers[other].ctx;
          std::snprintf(what, sizeof what,
                        "race: threads (%u, %u, %u) and this one wrote byte %zu of %s shared memory "
                        "with no __syncthreads between",
                        o.thread_idx.x, o.thread_idx.y, o.thread_idx.z, b,
                        r.tag == nullptr ? "dynamic" : "a static");
          current = int(t);
          fail(what);
        }
        if (other < 0) touched.emplace_back(&r, b);
        r.writer[b] = int(t);
        r.shadow[b] = r.data[b];
      }
    }
  }
}

void barrier_reached() {
  for (auto& [r, b] : touched) r->writer[b] = -1, r->atomic[b] = 0;
  touched.clear();
}

Region* region_of(const void* p) {
  const char* c = static_cast<const char*>(p);
  for (auto& r : regions)
    if (c >= r->data && c < r->data + r->size) return r.get();
  return nullptr;
}

// After a round: every live thread waits at the same barrier, or every thread has finished.
void check_round() {
  const Fiber* waiting = nullptr;
  const Fiber* exited = nullptr;
  for (const Fiber& f : fibers) (f.done ? exited : waiting) = &f;
  if (waiting == nullptr) return;
  char what[512];
  if (exited != nullptr) {
    current = int(waiting - fibers.data());
    std::snprintf(what, sizeof what,
                  "barrier divergence: this thread waits at __syncthreads %s:%d (its barrier %u) but "
                  "thread (%u, %u, %u) exited after %u barriers",
                  waiting->file, waiting->line, waiting->barriers, exited->ctx.thread_idx.x,
                  exited->ctx.thread_idx.y, exited->ctx.thread_idx.z, exited->barriers);
    fail(what);
  }
  for (const Fiber& f : fibers)
    if (f.line != waiting->line || std::strcmp(f.file, waiting->file) != 0) {
      current = int(&f - fibers.data());
      std::snprintf(what, sizeof what,
                    "barrier divergence: this thread waits at __syncthreads %s:%d, thread "
                    "(%u, %u, %u) at %s:%d",
                    f.file, f.line, waiting->ctx.thread_idx.x, waiting->ctx.thread_idx.y,
                    waiting->ctx.thread_idx.z, waiting->file, waiting->line);
      fail(what);
    }
}

void run_block(const Cfg& cfg, dim3 block, std::mt19937_64& rng) {
  for (auto& r : regions) r->poison();
  for (unsigned t = 0; t < block_threads; ++t) {
    Fiber& f = fibers[t];
    f.done = false;
    f.barriers = 0;
    f.file = "";
    f.line = 0;
    f.ctx.thread_idx = dim3(t % cfg.block.x, t / cfg.block.x % cfg.block.y,
                            t / (cfg.block.x * cfg.block.y));
    f.ctx.block_idx = block;
    f.ctx.block_dim = cfg.block;
    f.ctx.grid_dim = cfg.grid;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.data();
    f.context.uc_stack.ss_size = kStack;
    f.context.uc_link = nullptr;
    makecontext(&f.context, trampoline, 0);
  }
  // Each round runs every live thread to its next barrier (or its end), in a random order.
  std::vector<unsigned> order;
  for (;;) {
    order.clear();
    for (unsigned t = 0; t < block_threads; ++t)
      if (!fibers[t].done) order.push_back(t);
    if (order.empty()) return;
    std::shuffle(order.begin(), order.end(), rng);
    for (unsigned t : order) {
      resume(t);
      if (abandoned) return;
      check_writes(t);
    }
    check_round();
    barrier_reached();
  }
}

}  // namespace

Ctx& ctx() { return current >= 0 ? fibers[current].ctx : host; }

void* dyn_smem() {
  if (current < 0) fail("dynamic shared memory used outside a kernel");
  return regions[0]->data;
}

void* shared_slot(const void* tag, size_t size, size_t align) {
  if (current < 0) fail("__shared__ declared outside a kernel");
  for (auto& r : regions)
    if (r->tag == tag) return r->data;
  size_t total = size;
  for (auto& r : regions) total += r->size;
  if (total > smem_limit) {
    char what[200];
    std::snprintf(what, sizeof what,
                  "%zu bytes of static and dynamic shared memory exceed the %zu a block may use",
                  total, smem_limit);
    fail(what);
  }
  regions.push_back(std::make_unique<Region>(tag, size, align));
  return regions.back()->data;
}

void atomic_access(const void* p, size_t size) {
  Region* r = region_of(p);
  if (r == nullptr) return;
  const size_t at = size_t(static_cast<const char*>(p) - r->data);
  for (size_t b = at; b < at + size && b < r->size; ++b) {
    r->atomic[b] = 1;
    touched.emplace_back(r, b);  // reset at the next barrier, changed or not
  }
}

void launch_bounds(int max_threads, int min_blocks) {
  if (max_threads <= 0 || max_threads > 1024 || min_blocks < 0) fail("invalid __launch_bounds__");
  if (int(block_threads) <= max_threads) return;
  // A GPU refuses the launch; nothing of the kernel runs past this point.
  last_error = cudaErrorLaunchOutOfResources;
  abandoned = true;
  to_scheduler(false);
  fail("an abandoned launch resumed");
}

void sync(const char* file, int line) {
  if (current < 0) fail("__syncthreads outside a kernel");
  Fiber& f = fibers[current];
  ++f.barriers;
  f.file = file;
  f.line = line;
  to_scheduler(false);
}

cudaError_t set_max_dynamic_smem(const void* kernel, int bytes) {
  int optin = 0;
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
  if (bytes < 0 || bytes > optin) return cudaErrorInvalidValue;
  max_dynamic[kernel] = bytes;
  return cudaSuccess;
}

void run(const Cfg& cfg, const void* kernel, const std::function<void()>& kernel_body) {
  if (current >= 0) fail("a kernel launched from a kernel");
  const unsigned threads = cfg.block.x * cfg.block.y * cfg.block.z;
  if (threads == 0 || threads > 1024 || cfg.block.z > 64 || cfg.grid.x == 0 || cfg.grid.y == 0 ||
      cfg.grid.z == 0 || cfg.grid.y > 65535 || cfg.grid.z > 65535) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  // Above 48 KiB of dynamic shared memory a kernel needs the opt-in; static + dynamic must fit the
  // default, or with the opt-in the device's maximum.
  const auto optin = max_dynamic.find(kernel);
  const size_t dyn_limit = optin != max_dynamic.end() ? size_t(optin->second) : kDefaultSmem;
  if (cfg.smem > dyn_limit) {
    last_error = cudaErrorInvalidValue;
    return;
  }
  int device_max = 0;
  cudaDeviceGetAttribute(&device_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
  smem_limit = optin != max_dynamic.end() ? size_t(device_max) : kDefaultSmem;
  race_check = env_int("TROPFX_EMU_RACECHECK", 1) != 0;
  std::mt19937_64 rng(uint64_t(env_int("TROPFX_EMU_SEED", 1)) * 0x9e3779b97f4a7c15ull + launches++);

  body = &kernel_body;
  block_threads = threads;
  abandoned = false;
  fibers.resize(threads);
  for (Fiber& f : fibers) f.stack.resize(kStack);
  regions.clear();
  regions.push_back(std::make_unique<Region>(nullptr, cfg.smem, 16));
  touched.clear();
  for (unsigned bz = 0; bz < cfg.grid.z && !abandoned; ++bz)
    for (unsigned by = 0; by < cfg.grid.y && !abandoned; ++by)
      for (unsigned bx = 0; bx < cfg.grid.x && !abandoned; ++bx) run_block(cfg, dim3(bx, by, bz), rng);
  regions.clear();  // freed: a pointer kept past the launch is a use after free under ASan
  touched.clear();
  body = nullptr;
}

}  // namespace emu

void __trap() { emu::fail("__trap(): a device-side check failed"); }
