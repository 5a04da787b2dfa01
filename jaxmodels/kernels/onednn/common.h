// What the oneDNN kernels (conv.cc, lstm.cc) share: the engine, per-thread buffers, and executing
// a primitive with a user-managed scratchpad.
//
// Everything here is inline at namespace scope, so the kernels of one library share one engine.

#ifndef JAXMODELS_KERNELS_ONEDNN_COMMON_H_
#define JAXMODELS_KERNELS_ONEDNN_COMMON_H_

#include <cstdlib>
#include <memory>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"

namespace jaxmodels_onednn {

inline dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One thread's growing, 64-byte aligned buffer. The primitives run with a user-managed
// scratchpad, so one primitive can execute on several threads at once (pmap over host devices,
// XLA running independent ops concurrently) without sharing oneDNN's library scratchpad.
class Scratch {
 public:
  void* Get(size_t bytes) {
    if (bytes > size_) {
      data_.reset(static_cast<char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
      size_ = bytes;
    }
    return data_.get();
  }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> data_;
  size_t size_ = 0;
};

// The scratchpad and the weights staged in a primitive's own layout, per calling thread.
inline thread_local Scratch scratchpad, staged_weights;

inline dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// This oneDNN build threads with OpenMP (GNU libgomp): each calling thread forks its own team, of
// the size set with omp_set_num_threads for that thread. Every handler takes a `threads`
// attribute, which the Python side sets to usable cores / host devices, the same for every call
// of a process: oneDNN partitions reductions (weight gradients) by the team size, so a size that
// followed the calls running at the moment would make results depend on timing, and a resumed
// run would no longer equal an uninterrupted one bit for bit.
inline void Execute(const dnnl::primitive& p, std::unordered_map<int, dnnl::memory> args,
                    void* scratch, size_t scratch_bytes) {
  thread_local dnnl::stream stream(Engine());
  if (scratch_bytes) {
    args.emplace(DNNL_ARG_SCRATCHPAD,
                 dnnl::memory(dnnl::memory::desc({static_cast<int64_t>(scratch_bytes)},
                                                 dnnl::memory::data_type::u8,
                                                 dnnl::memory::format_tag::x),
                              Engine(), scratch));
  }
  p.execute(stream, args);
  stream.wait();
}

}  // namespace jaxmodels_onednn

#endif  // JAXMODELS_KERNELS_ONEDNN_COMMON_H_
