#include "common/xxhash64.h"

#include <cstring>

namespace cpuchat {

namespace {

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ull, kP2 = 0xC2B2AE3D27D4EB4Full, kP3 = 0x165667B19E3779F9ull,
                   kP4 = 0x85EBCA77C2B2AE63ull, kP5 = 0x27D4EB2F165667C5ull;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t read64(const uint8_t* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }  // little-endian hosts
inline uint32_t read32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
inline uint64_t round(uint64_t acc, uint64_t input) { return rotl(acc + input * kP2, 31) * kP1; }
inline uint64_t merge(uint64_t acc, uint64_t v) { return (acc ^ round(0, v)) * kP1 + kP4; }

}  // namespace

Xxhash64Stream::Xxhash64Stream(uint64_t seed)
    : seed_(seed), v_{seed + kP1 + kP2, seed + kP2, seed, seed - kP1} {}

void Xxhash64Stream::update(const void* data, size_t len) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  const uint8_t* const end = p + len;
  total_ += len;
  if (buffered_ + len < 32) {  // not a whole stripe yet
    std::memcpy(buffer_ + buffered_, p, len);
    buffered_ += len;
    return;
  }
  auto stripe = [this](const uint8_t* s) {
    // Four independent lanes over 32-byte stripes: the multiplies overlap in the pipeline.
    v_[0] = round(v_[0], read64(s));
    v_[1] = round(v_[1], read64(s + 8));
    v_[2] = round(v_[2], read64(s + 16));
    v_[3] = round(v_[3], read64(s + 24));
  };
  if (buffered_ > 0) {  // complete the carried stripe
    const size_t fill = 32 - buffered_;
    std::memcpy(buffer_ + buffered_, p, fill);
    stripe(buffer_);
    p += fill;
    buffered_ = 0;
  }
  for (; p + 32 <= end; p += 32) stripe(p);
  buffered_ = size_t(end - p);
  std::memcpy(buffer_, p, buffered_);
}

uint64_t Xxhash64Stream::digest() const {
  uint64_t h;
  if (total_ >= 32) {
    h = rotl(v_[0], 1) + rotl(v_[1], 7) + rotl(v_[2], 12) + rotl(v_[3], 18);
    h = merge(merge(merge(merge(h, v_[0]), v_[1]), v_[2]), v_[3]);
  } else {
    h = seed_ + kP5;
  }
  h += total_;
  const uint8_t* p = buffer_;
  const uint8_t* const end = buffer_ + buffered_;
  for (; p + 8 <= end; p += 8) h = rotl(h ^ round(0, read64(p)), 27) * kP1 + kP4;
  if (p + 4 <= end) {
    h = rotl(h ^ (uint64_t(read32(p)) * kP1), 23) * kP2 + kP3;
    p += 4;
  }
  for (; p < end; ++p) h = rotl(h ^ (*p * kP5), 11) * kP1;
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

uint64_t xxhash64(const void* data, size_t len, uint64_t seed) {
  Xxhash64Stream s(seed);
  s.update(data, len);
  return s.digest();
}

}  // namespace cpuchat
