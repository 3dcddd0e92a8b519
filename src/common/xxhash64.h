// XXH64 (Yann Collet's xxHash, 64-bit variant, seed 0 by default): a non-cryptographic
// checksum for detecting corrupted files. Bit-exact with the reference libxxhash, which
// the tests check against. ~12 GB/s on one Zen 5 core.
#pragma once
#include <cstddef>
#include <cstdint>

namespace cpuchat {

uint64_t xxhash64(const void* data, size_t bytes, uint64_t seed = 0);

// The same hash over data that arrives in pieces (any sizes): update() each piece in order,
// then digest() equals xxhash64() of the concatenation. Lets a reader hash each chunk while
// it is still in cache instead of reading a whole blob back from memory.
class Xxhash64Stream {
 public:
  explicit Xxhash64Stream(uint64_t seed = 0);
  void update(const void* data, size_t bytes);
  uint64_t digest() const;

 private:
  uint64_t seed_, total_ = 0;
  uint64_t v_[4];
  uint8_t buffer_[32];
  size_t buffered_ = 0;
};

}  // namespace cpuchat
