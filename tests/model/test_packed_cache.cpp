// --cache-packed through the real binary: the first int4 load saves the packed weights next
// to the model, the next loads them and answers exactly as a fresh repack does; a damaged or
// stale cache (checksums, content fingerprint, overlapping index) is never trusted (repacked
// and rewritten), and a read-only cache problem is a warning, not a failure.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/run_process.h"

using cpuchat::test::run_process;
namespace fs = std::filesystem;

namespace {

class PackedCacheCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cpuchat_packed_cache_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::copy(std::string(CPUCHAT_SHARED_DIR) + "/models/hf/stories260K", dir_);
    for (const auto& e : fs::directory_iterator(dir_))
      fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add);
  }
  void TearDown() override { fs::remove_all(dir_); }

  cpuchat::test::ProcessResult generate(bool cache) {
    std::vector<std::string> argv = {CPUCHAT_BINARY, "generate", "--model", dir_.string(), "--backend", "int4",
                                     "--prompt", "Once upon a time", "--max-tokens", "40", "--temperature", "0",
                                     "--threads", "2", "--json"};
    if (cache) argv.push_back("--cache-packed");
    return run_process(argv);
  }
  fs::path any_cache_file() const {
    for (const auto& e : fs::directory_iterator(dir_))
      if (e.path().extension() == ".cache") return e.path();
    return {};
  }
  // The generated token ids (greedy), from --json output.
  static std::vector<int> ids_of(const std::string& json_out) {
    const auto j = nlohmann::json::parse(json_out);
    EXPECT_EQ(j["ids"].size(), 40u);
    return j["ids"].get<std::vector<int>>();
  }
  static std::string read(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  static void write(const fs::path& p, const std::string& bytes) { std::ofstream(p, std::ios::binary) << bytes; }
  fs::path dir_;
};

TEST_F(PackedCacheCli, SavedOnceThenMappedWithIdenticalOutput) {
  const auto fresh = generate(false);
  ASSERT_EQ(fresh.exit_code, 0) << fresh.err;
  EXPECT_TRUE(any_cache_file().empty()) << "no cache without --cache-packed";

  const auto first = generate(true);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_NE(first.err.find("saved int4 weights to"), std::string::npos) << first.err;
  const fs::path file = any_cache_file();
  ASSERT_FALSE(file.empty());
  EXPECT_GT(fs::file_size(file), 100000u);  // stories260K: ~0.2 MB of packed weights

  const auto second = generate(true);
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_NE(second.err.find("int4 weights mapped from"), std::string::npos) << second.err;
  EXPECT_EQ(second.err.find("saved"), std::string::npos) << second.err;
  EXPECT_EQ(ids_of(second.out), ids_of(fresh.out));
  EXPECT_EQ(ids_of(first.out), ids_of(fresh.out));
}

TEST_F(PackedCacheCli, TruncatedOrGarbageCacheIsRepackedNotTrusted) {
  ASSERT_EQ(generate(true).exit_code, 0);
  const fs::path file = any_cache_file();
  ASSERT_FALSE(file.empty());
  const auto reference = generate(true);
  for (int damage = 0; damage < 2; ++damage) {
    if (damage == 0) {
      fs::resize_file(file, fs::file_size(file) / 2);
    } else {
      std::ofstream(file, std::ios::binary | std::ios::trunc) << "not a cache at all";
    }
    const auto r = generate(true);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("packed cache not used, repacking"), std::string::npos) << r.err;
    EXPECT_EQ(ids_of(r.out), ids_of(reference.out));
    const auto again = generate(true);  // rewritten: mapped again
    EXPECT_NE(again.err.find("int4 weights mapped from"), std::string::npos) << again.err;
  }
}

TEST_F(PackedCacheCli, TouchedCheckpointKeepsItsCache) {
  ASSERT_EQ(generate(true).exit_code, 0);
  // Same bytes, new modification time (a copy, a touch): the content fingerprint still matches.
  const fs::path weights = dir_ / "model.safetensors";
  fs::last_write_time(weights, fs::last_write_time(weights) + std::chrono::seconds(5));
  const auto r = generate(true);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("int4 weights mapped from"), std::string::npos) << r.err;
}

// Issue 12 item 9: a cache made from other weights of the same size and mtime was used.
TEST_F(PackedCacheCli, OtherWeightsOfTheSameSizeAndMtimeMakeTheCacheStale) {
  ASSERT_EQ(generate(true).exit_code, 0);
  const fs::path weights = dir_ / "model.safetensors";
  const auto mtime = fs::last_write_time(weights);
  std::string bytes = read(weights);
  for (size_t i = bytes.size() / 2; i < bytes.size() / 2 + 4096; i += 4) bytes[i] ^= 0x40;  // other weights
  write(weights, bytes);
  fs::last_write_time(weights, mtime);
  const auto r = generate(true);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("made from other files or settings"), std::string::npos) << r.err;
}

// Issue 12 item 9: random bytes in the packed weights (headers intact) loaded and answered <unk>.
TEST_F(PackedCacheCli, CorruptedPackedWeightsFailTheChecksum) {
  ASSERT_EQ(generate(true).exit_code, 0);
  const fs::path file = any_cache_file();
  const auto reference = generate(true);
  std::string bytes = read(file);
  for (size_t i = 4096 + 64; i < 4096 + 64 + 512; ++i) bytes[i] = char(i * 131);  // first blob, past its header
  write(file, bytes);
  const auto r = generate(true);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("fails its checksum"), std::string::npos) << r.err;
  EXPECT_EQ(ids_of(r.out), ids_of(reference.out));
}

// Issue 12 item 9: an index with every tensor at one offset must be repacked, not refused.
TEST_F(PackedCacheCli, IndexWithEveryTensorAtOneOffsetIsRepacked) {
  ASSERT_EQ(generate(true).exit_code, 0);
  const fs::path file = any_cache_file();
  const auto reference = generate(true);
  std::string bytes = read(file);
  uint64_t index_offset, index_bytes;
  std::memcpy(&index_offset, bytes.data() + 16, 8);
  std::memcpy(&index_bytes, bytes.data() + 24, 8);
  auto index = nlohmann::json::parse(bytes.substr(index_offset, index_bytes));
  const auto first = index["tensors"].begin().value();
  for (auto& [name, where] : index["tensors"].items()) where = first;  // checksums match too
  const std::string text = index.dump();
  bytes = bytes.substr(0, index_offset) + text;
  index_bytes = text.size();
  std::memcpy(bytes.data() + 24, &index_bytes, 8);
  write(file, bytes);
  const auto r = generate(true);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("packed cache not used, repacking"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("overlap"), std::string::npos) << r.err;
  EXPECT_EQ(ids_of(r.out), ids_of(reference.out));
}

TEST_F(PackedCacheCli, OtherQuantSchemeHasItsOwnCache) {
  ASSERT_EQ(generate(true).exit_code, 0);
  auto r = run_process({CPUCHAT_BINARY, "generate", "--model", dir_.string(), "--backend", "int4", "--quant", "q4c",
                        "--prompt", "Once", "--max-tokens", "4", "--cache-packed"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("saved int4 weights to"), std::string::npos) << r.err;
  int caches = 0;
  for (const auto& e : fs::directory_iterator(dir_)) caches += e.path().extension() == ".cache";
  EXPECT_EQ(caches, 2);
}

}  // namespace
