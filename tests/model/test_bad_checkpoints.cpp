// Broken model files end with a one-line error naming the file and the problem, a
// non-zero exit code, and never a crash.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/run_process.h"

namespace fs = std::filesystem;
using cpuchat::test::run_process;

namespace {

const std::string kShared = CPUCHAT_SHARED_DIR;

class BadCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cpuchat_bad_" + std::to_string(getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  void write(const fs::path& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }
  // A copy of the trained HF stories260K directory we can break.
  fs::path hf_copy() {
    fs::path d = dir_ / "hf";
    fs::create_directories(d);
    for (auto& e : fs::directory_iterator(kShared + "/models/hf/stories260K")) fs::copy(e.path(), d / e.path().filename());
    for (auto& e : fs::directory_iterator(d)) fs::permissions(e.path(), fs::perms::owner_all, fs::perm_options::add);
    return d;
  }
  // Runs `cpuchat generate` and checks the failure is clean and names `what`.
  void expect_clean_failure(const std::vector<std::string>& extra, const std::string& names_file, const std::string& problem) {
    std::vector<std::string> argv = {CPUCHAT_BINARY, "generate", "--backend", "fp32", "--prompt", "Once", "--max-tokens", "2"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto r = run_process(argv);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_LT(r.exit_code, 128) << "killed by a signal: " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "not one line: " << r.err;
    EXPECT_NE(r.err.find(names_file), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(problem), std::string::npos) << r.err;
  }
  fs::path dir_;
};

TEST_F(BadCheckpoint, MissingPath) {
  expect_clean_failure({"--model", (dir_ / "nope").string()}, "nope", "no such file");
}

TEST_F(BadCheckpoint, TruncatedSafetensors) {
  auto d = hf_copy();
  std::string bytes = read(d / "model.safetensors");
  write(d / "model.safetensors", bytes.substr(0, bytes.size() / 2));
  expect_clean_failure({"--model", d.string()}, "model.safetensors", "past the end");
}

TEST_F(BadCheckpoint, SafetensorsHeaderLengthPastTheEnd) {
  auto d = hf_copy();
  std::string bytes = read(d / "model.safetensors");
  uint64_t huge = uint64_t(1) << 40;
  std::memcpy(bytes.data(), &huge, 8);
  write(d / "model.safetensors", bytes);
  expect_clean_failure({"--model", d.string()}, "model.safetensors", "header length");
}

TEST_F(BadCheckpoint, SafetensorsTooShortForAHeader) {
  auto d = hf_copy();
  write(d / "model.safetensors", "abc");
  expect_clean_failure({"--model", d.string()}, "model.safetensors", "truncated");
}

TEST_F(BadCheckpoint, UnsupportedDtype) {
  auto d = hf_copy();
  nlohmann::json header = {{"model.norm.weight", {{"dtype", "I64"}, {"shape", {8}}, {"data_offsets", {0, 64}}}}};
  std::string h = header.dump();
  uint64_t n = h.size();
  write(d / "model.safetensors", std::string(reinterpret_cast<char*>(&n), 8) + h + std::string(64, '\0'));
  expect_clean_failure({"--model", d.string()}, "model.safetensors", "unsupported dtype I64");
}

TEST_F(BadCheckpoint, ShapeDisagreesWithConfig) {
  auto d = hf_copy();
  auto cfg = nlohmann::json::parse(read(d / "config.json"));
  cfg["intermediate_size"] = 200;
  write(d / "config.json", cfg.dump());
  expect_clean_failure({"--model", d.string()}, d.string(), "but the config implies");
}

TEST_F(BadCheckpoint, MalformedConfigJson) {
  auto d = hf_copy();
  write(d / "config.json", "{\"hidden_size\": 64,");
  expect_clean_failure({"--model", d.string()}, "config.json", "malformed JSON");
}

TEST_F(BadCheckpoint, MissingTokenizer) {
  // The HF Llama 3.1 twin ships no tokenizer: text generation needs one.
  expect_clean_failure({"--model", kShared + "/models/hf/llama31-tiny-random"}, "llama31-tiny-random", "no tokenizer");
}

TEST_F(BadCheckpoint, GgufWrongMagic) {
  std::string bytes = read(kShared + "/models/gguf/stories260K.gguf");
  bytes[0] = 'X';
  write(dir_ / "bad.gguf", bytes);
  expect_clean_failure({"--model", (dir_ / "bad.gguf").string()}, "bad.gguf", "wrong magic");
}

TEST_F(BadCheckpoint, GgufTruncatedInTheHeader) {
  write(dir_ / "cut.gguf", read(kShared + "/models/gguf/stories260K.gguf").substr(0, 200));
  expect_clean_failure({"--model", (dir_ / "cut.gguf").string()}, "cut.gguf", "truncated");
}

TEST_F(BadCheckpoint, GgufTruncatedInTheData) {
  std::string bytes = read(kShared + "/models/gguf/stories260K.gguf");
  write(dir_ / "short.gguf", bytes.substr(0, bytes.size() - 1000));
  expect_clean_failure({"--model", (dir_ / "short.gguf").string()}, "short.gguf", "past the end");
}

TEST_F(BadCheckpoint, Llama2cTruncated) {
  std::string bytes = read(kShared + "/models/llama2c/stories260K.bin");
  write(dir_ / "cut.bin", bytes.substr(0, bytes.size() / 3));
  expect_clean_failure({"--model", (dir_ / "cut.bin").string(), "--tokenizer", kShared + "/models/llama2c/tok512.bin"},
                       "cut.bin", "truncated");
}

TEST_F(BadCheckpoint, Llama2cGarbageHeader) {
  write(dir_ / "junk.bin", std::string(4096, '\x7f'));
  expect_clean_failure({"--model", (dir_ / "junk.bin").string(), "--tokenizer", kShared + "/models/llama2c/tok512.bin"},
                       "junk.bin", "not a llama2.c checkpoint");
}

TEST_F(BadCheckpoint, MetaTruncatedPth) {
  fs::path d = dir_ / "meta";
  fs::create_directories(d);
  const std::string src = kShared + "/models/meta/llama31-tiny-random/";
  write(d / "params.json", read(src + "params.json"));
  write(d / "tokenizer.model", read(src + "tokenizer.model"));
  std::string pth = read(src + "consolidated.00.pth");
  write(d / "consolidated.00.pth", pth.substr(0, pth.size() / 2));
  expect_clean_failure({"--model", d.string()}, "consolidated.00.pth", "");
}

TEST_F(BadCheckpoint, MetaNotAZip) {
  fs::path d = dir_ / "meta";
  fs::create_directories(d);
  write(d / "params.json", read(kShared + "/models/meta/llama31-tiny-random/params.json"));
  write(d / "consolidated.00.pth", std::string(10000, 'z'));
  expect_clean_failure({"--model", d.string()}, "consolidated.00.pth", "cannot read torch archive");
}

TEST_F(BadCheckpoint, NotAModelDirectory) {
  expect_clean_failure({"--model", dir_.string()}, dir_.string(), "not a model directory");
}

TEST_F(BadCheckpoint, BadFlagsAreUsageErrors) {
  auto r = run_process({CPUCHAT_BINARY, "generate", "--model", kShared + "/models/hf/stories260K", "--prompt", "x",
                        "--max-tokens", "lots"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--max-tokens expects an integer"), std::string::npos) << r.err;
  r = run_process({CPUCHAT_BINARY, "generate", "--model", kShared + "/models/hf/stories260K", "--ids", "1,99999", "--backend", "fp32"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("outside the vocabulary"), std::string::npos) << r.err;
  r = run_process({CPUCHAT_BINARY, "logits", "--model", kShared + "/models/hf/stories260K", "--ids", "1,,2"});
  EXPECT_EQ(r.exit_code, 2);
  r = run_process({CPUCHAT_BINARY, "generate", "--model", kShared + "/models/hf/stories260K", "--prompt", "x", "--backend", "int8"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("unknown backend"), std::string::npos) << r.err;
  r = run_process({CPUCHAT_BINARY, "frobnicate"});
  EXPECT_EQ(r.exit_code, 2);
}

}  // namespace
