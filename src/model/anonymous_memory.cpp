#include "model/anonymous_memory.h"

#include <sys/mman.h>

#include <cstdint>
#include <new>

namespace cpuchat {

torch::Tensor anonymous_bytes(int64_t bytes) {
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const size_t length = size_t(bytes) + kHuge;  // room to start on a 2 MiB boundary
  void* map = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t start = (reinterpret_cast<uintptr_t>(map) + kHuge - 1) / kHuge * kHuge;
  const size_t whole = size_t(bytes) / kHuge * kHuge;
  if (whole > 0) madvise(reinterpret_cast<void*>(start), whole, MADV_HUGEPAGE);  // advice: failure is harmless
  return torch::from_blob(
      reinterpret_cast<void*>(start), {bytes}, [map, length](void*) { munmap(map, length); }, torch::kUInt8);
}

}  // namespace cpuchat
