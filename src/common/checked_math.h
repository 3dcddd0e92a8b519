// Overflow-checked size arithmetic for sizes and offsets read from untrusted file headers:
// a wrapped sum or product would turn a bounds check into an out-of-bounds read.
#pragma once
#include <cstdint>
#include <optional>

namespace cpuchat {

inline std::optional<uint64_t> checked_add(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

inline std::optional<uint64_t> checked_mul(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// True when [offset, offset + bytes) lies inside a buffer of `size` bytes, without overflow.
inline bool range_inside(uint64_t offset, uint64_t bytes, uint64_t size) {
  return offset <= size && bytes <= size - offset;
}

}  // namespace cpuchat
