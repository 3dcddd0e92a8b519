// The packed cache's checksum is XXH64: bit-exact with the reference library (libxxhash0,
// loaded at run time so the build needs no xxhash headers), and fast enough that checking a
// cache costs little next to reading it (measured, printed).
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <random>
#include <vector>

#include "common/xxhash64.h"

namespace {

using ReferenceXxh64 = unsigned long long (*)(const void*, size_t, unsigned long long);

TEST(Xxhash64, BitExactWithLibxxhash) {
  void* lib = dlopen("libxxhash.so.0", RTLD_NOW);
  ASSERT_NE(lib, nullptr) << "libxxhash0 is missing: run scripts/install-deps.sh --test";
  auto reference = reinterpret_cast<ReferenceXxh64>(dlsym(lib, "XXH64"));
  ASSERT_NE(reference, nullptr);
  std::mt19937_64 rng(7);
  std::vector<uint8_t> bytes(1 << 16);
  for (auto& b : bytes) b = uint8_t(rng());
  // Every length around the 4-, 8- and 32-byte paths, at unaligned starts, several seeds.
  for (size_t len = 0; len < 300; ++len)
    for (uint64_t seed : {uint64_t(0), uint64_t(1), uint64_t(0x9E3779B185EBCA87ull)})
      ASSERT_EQ(cpuchat::xxhash64(bytes.data() + len % 7, len, seed), reference(bytes.data() + len % 7, len, seed))
          << "len " << len << " seed " << seed;
  EXPECT_EQ(cpuchat::xxhash64(bytes.data(), bytes.size()), reference(bytes.data(), bytes.size(), 0));
  // In pieces of random sizes (empty ones, pieces inside one stripe, pieces spanning many).
  for (int trial = 0; trial < 200; ++trial) {
    const size_t len = rng() % 3000;
    cpuchat::Xxhash64Stream stream(trial % 3);
    for (size_t at = 0; at < len;) {
      const size_t piece = std::min(len - at, size_t(rng() % (trial % 2 ? 80 : 7)));
      stream.update(bytes.data() + at, piece);
      at += piece;
    }
    ASSERT_EQ(stream.digest(), reference(bytes.data(), len, trial % 3)) << "len " << len << " trial " << trial;
  }
}

TEST(Xxhash64, ThroughputNextToMemcpy) {
  std::vector<uint8_t> src(64 << 20, 3), dst(src.size());
  double hash_s = 1e9, copy_s = 1e9;
  for (int i = 0; i < 3; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    volatile uint64_t h = cpuchat::xxhash64(src.data(), src.size());
    (void)h;
    hash_s = std::min(hash_s, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    t0 = std::chrono::steady_clock::now();
    std::memcpy(dst.data(), src.data(), src.size());
    copy_s = std::min(copy_s, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::printf("[ measure ] xxhash64 %.1f GB/s, memcpy %.1f GB/s (one thread)\n", src.size() / hash_s / 1e9,
              src.size() / copy_s / 1e9);
  EXPECT_GT(src.size() / hash_s / 1e9, 0.2);  // sanity: a broken (e.g. byte-wise) loop would be far slower
}

}  // namespace
