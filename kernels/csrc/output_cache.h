// A cache of CPU output buffers for the operators' results (the binding side: needs torch).
//
// torch's CPU allocator is glibc's malloc: a large block goes back to the operating system when its
// tensor dies (unmapped, or trimmed off the heap), so the next output of that size starts on fresh
// pages: a page fault and the kernel zeroing each 4 KiB page before the operator writes it. For a
// bandwidth-bound operator that is most of its time (sparse max-plus, B=4096, 4096 -> 4096: 17.5 ms
// against 7.1 ms on mapped pages), and mid-size outputs pay it too once other code frees large
// tensors (the 200 KB output of bool_conv2d, 64 -> 64 channels at 56 x 56, N = 8: allocated and
// written in 7 us back to back, 43 us right after a float conv2d of the same layer). This cache
// keeps freed output blocks of >= 16 KiB, up to a byte limit, and hands a request the smallest idle
// block that fits it if that is at most 1/8 larger, as torch's CUDA caching allocator does on the
// GPU. Smaller outputs go to torch's allocator.
//
// The limit: $TROPFX_OUTPUT_CACHE_MIB (default 512; 0 turns the cache off), or set at run time
// through the tropfx::_output_cache operator (tropfx.kernels.output_cache). Freed blocks past the
// limit go back to the system, oldest first. An idle block stays mapped (resident) until it is
// reused or evicted, which is the price: at most the limit of idle memory.
#pragma once

#include <ATen/EmptyTensor.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace tropfx::binding {

class OutputCache final : public c10::Allocator {
 public:
  static constexpr size_t kMinBytes = size_t(16) << 10;

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
#if defined(__unix__) || defined(__APPLE__)
    // A fork (DataLoader workers) while another thread holds the lock would leave the child's
    // copy locked forever: the forking thread takes it, and both processes release it.
    pthread_atfork([] { get().mutex_.lock(); }, [] { get().mutex_.unlock(); },
                   [] { get().mutex_.unlock(); });
#endif
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes) return c10::GetCPUAllocator()->allocate(n);
    Block* block = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // Best fit: the smallest idle block of size in [n, n + n / 8], the most recently freed
      // of that size (the likeliest still in cache).
      const auto it = by_size_.lower_bound({n, 0});
      if (it != by_size_.end() && it->first - n <= n / 8) {
        const uint64_t seq = ~it->second;
        block = by_age_.at(seq);
        by_size_.erase(it);
        by_age_.erase(seq);
        cached_ -= block->size;
        ++hits_;
      } else {
        ++misses_;
      }
    }
    if (block == nullptr) block = new Block{c10::alloc_cpu(n), n};
    return {block->ptr, block, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Sets the limit (bytes; negative: unchanged) and evicts what no longer fits, or everything
  // (clear). Returns the stats.
  Stats configure(int64_t limit, bool clear) {
    std::vector<Block*> evicted;
    Stats stats;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (limit >= 0) limit_ = size_t(limit);
      evict_to(clear ? 0 : limit_, evicted);
      stats = {int64_t(limit_), int64_t(cached_), int64_t(by_age_.size()), hits_, misses_};
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
        const uint64_t seq = next_seq_++;
        by_age_.emplace(seq, block);
        by_size_.emplace(block->size, ~seq);  // ~seq: the newest first among equal sizes
        cached_ += block->size;
        block = nullptr;
      }
    }
    if (block != nullptr) evicted.push_back(block);
    destroy(evicted);
  }

  // Oldest first, until at most ``keep`` bytes are idle (under the lock).
  void evict_to(size_t keep, std::vector<Block*>& evicted) {
    while (cached_ > keep) {
      const auto oldest = by_age_.begin();
      Block* block = oldest->second;
      by_size_.erase({block->size, ~oldest->first});
      by_age_.erase(oldest);
      cached_ -= block->size;
      evicted.push_back(block);
    }
  }

  static void destroy(const std::vector<Block*>& blocks) {  // outside the lock
    for (Block* b : blocks) {
      c10::free_cpu(b->ptr);
      delete b;
    }
  }

  std::mutex mutex_;
  std::map<uint64_t, Block*> by_age_;               // idle blocks by the order they were freed
  std::set<std::pair<size_t, uint64_t>> by_size_;  // (size, ~order)
  uint64_t next_seq_ = 0;
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
