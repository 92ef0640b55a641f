// A cache of large CPU output buffers for the operators' results (the binding side: needs torch).
//
// torch's CPU allocator hands a large block back to the operating system when its tensor dies
// (glibc unmaps anything past 32 MiB), so the next output of the same size starts on fresh pages:
// one page fault and the kernel zeroing each 4 KiB page before the operator writes it. For a
// bandwidth-bound operator that is most of its time (sparse max-plus, B=4096, 4096 -> 4096: 18 ms
// against 6.4 ms when the pages are already mapped; see benchmarks/RESULTS.md). This cache keeps
// recently freed blocks of >= 1 MiB, up to a byte limit, and gives one back to a request that fits it
// (at most 1/8 larger), as torch's CUDA caching allocator does on the GPU. Smaller blocks go to
// torch's allocator, whose heap already reuses them.
//
// The limit: $TROPFX_OUTPUT_CACHE_MIB (default 512; 0 turns the cache off), or set at run time
// through the tropfx::_output_cache operator (tropfx.kernels.output_cache). Freed blocks past the
// limit go back to the system, oldest first. A cached block stays mapped (resident) until it is
// reused or evicted, which is the price: at most the limit of idle memory.
#pragma once

#include <ATen/EmptyTensor.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstdint>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <vector>

namespace tropfx::binding {

class OutputCache final : public c10::Allocator {
 public:
  static constexpr size_t kMinBytes = size_t(1) << 20;

  struct Stats {
    int64_t limit, cached, blocks, hits, misses;
  };

  OutputCache() {
    const char* env = std::getenv("TROPFX_OUTPUT_CACHE_MIB");
    if (env != nullptr && *env != '\0') {
      char* end = nullptr;
      const long long mib = std::strtoll(env, &end, 10);
      if (end != env && *end == '\0' && mib >= 0) limit_ = size_t(mib) << 20;
    }
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes) return c10::GetCPUAllocator()->allocate(n);
    Block* block = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (limit_ > 0) {
        auto best = free_.end();  // best fit: the smallest block of size in [n, n + n / 8]
        for (auto it = free_.begin(); it != free_.end(); ++it)
          if ((*it)->size >= n && (*it)->size - n <= n / 8 &&
              (best == free_.end() || (*it)->size < (*best)->size))
            best = it;
        if (best != free_.end()) {
          block = *best;
          free_.erase(best);
          cached_ -= block->size;
          ++hits_;
        }
      }
      if (block == nullptr) ++misses_;
    }
    if (block == nullptr) block = new Block{c10::alloc_cpu(n), n};
    return {block->ptr, block, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Sets the limit (bytes; negative: unchanged), evicting what no longer fits. Returns the stats.
  Stats configure(int64_t limit, bool clear) {
    std::vector<Block*> evicted;
    Stats stats;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (limit >= 0) limit_ = size_t(limit);
      if (clear) {
        evicted.assign(free_.begin(), free_.end());
        free_.clear();
        cached_ = 0;
      } else {
        evict_to(limit_, evicted);
      }
      stats = {int64_t(limit_), int64_t(cached_), int64_t(free_.size()), hits_, misses_};
    }
    destroy(evicted);
    return stats;
  }

  static OutputCache& get() {
    static OutputCache* cache = new OutputCache();  // never destroyed: tensors may die at exit
    return *cache;
  }

 private:
  struct Block {
    void* ptr;
    size_t size;
  };

  static void release(void* ctx) { get().put(static_cast<Block*>(ctx)); }

  void put(Block* block) {
    std::vector<Block*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (block->size <= limit_) {
        evict_to(limit_ - block->size, evicted);
        free_.push_back(block);
        cached_ += block->size;
        block = nullptr;
      }
    }
    if (block != nullptr) evicted.push_back(block);
    destroy(evicted);
  }

  // Oldest first, until at most ``keep`` bytes are cached (under the lock).
  void evict_to(size_t keep, std::vector<Block*>& evicted) {
    while (cached_ > keep) {
      evicted.push_back(free_.front());
      cached_ -= free_.front()->size;
      free_.pop_front();
    }
  }

  static void destroy(const std::vector<Block*>& blocks) {  // outside the lock
    for (Block* b : blocks) {
      c10::free_cpu(b->ptr);
      delete b;
    }
  }

  std::mutex mutex_;
  std::deque<Block*> free_;  // oldest first
  size_t limit_ = size_t(512) << 20;
  size_t cached_ = 0;
  int64_t hits_ = 0, misses_ = 0;
};

// at::empty / at::zeros for an operator's outputs, from the cache.
inline at::Tensor output_empty(at::IntArrayRef shape, const at::TensorOptions& options) {
  return at::detail::empty_generic(shape, &OutputCache::get(),
                                   c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), std::nullopt);
}

inline at::Tensor output_zeros(at::IntArrayRef shape, const at::TensorOptions& options) {
  return output_empty(shape, options).zero_();
}

}  // namespace tropfx::binding
