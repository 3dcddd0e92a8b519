// Broken model files end with a one-line error naming the file and the problem, a
// non-zero exit code, and never a crash.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sys/stat.h>
#include <nlohmann/json.hpp>

#include "common/run_process.h"

namespace fs = std::filesystem;
using cpuchat::test::run_process;

namespace {

const std::string kShared = CPUCHAT_SHARED_DIR;

// Where things are in a GGUF file, found by walking it here (independently of the loader),
// so tests can corrupt one field: each tensor's offset field and each scalar value by key.
struct GgufLayout {
  std::map<std::string, size_t> tensor_offset_field, value_field;
  std::map<std::string, uint64_t> tensor_offset;
};
GgufLayout walk_gguf(const std::string& b) {
  GgufLayout out;
  size_t pos = 4 + 4;
  auto u32 = [&] { uint32_t v; std::memcpy(&v, b.data() + pos, 4); pos += 4; return v; };
  auto u64 = [&] { uint64_t v; std::memcpy(&v, b.data() + pos, 8); pos += 8; return v; };
  auto str = [&] { const uint64_t n = u64(); std::string s = b.substr(pos, n); pos += n; return s; };
  const size_t scalar_bytes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
  std::function<void(uint32_t)> skip = [&](uint32_t type) {
    if (type == 8) { str(); return; }
    if (type == 9) {
      const uint32_t elem = u32();
      const uint64_t n = u64();
      for (uint64_t i = 0; i < n; ++i) skip(elem);
      return;
    }
    pos += scalar_bytes[type];
  };
  const uint64_t n_tensors = u64(), n_kv = u64();
  for (uint64_t i = 0; i < n_kv; ++i) {
    const std::string key = str();
    const uint32_t type = u32();
    out.value_field[key] = pos;
    skip(type);
  }
  for (uint64_t i = 0; i < n_tensors; ++i) {
    const std::string name = str();
    pos += 8 * u32() + 4;  // dimensions, type
    out.tensor_offset_field[name] = pos;
    out.tensor_offset[name] = u64();
  }
  return out;
}

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
    // Under timeout(1): a load that blocks (a FIFO) fails the test instead of hanging it.
    std::vector<std::string> argv = {"/usr/bin/timeout", "60", CPUCHAT_BINARY, "generate", "--backend", "fp32", "--prompt", "Once", "--max-tokens", "2"};
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

// Rewrites the HF copy's safetensors header (`edit` gets the header JSON); the tensor data
// stays byte for byte, after the new header padded to 8 bytes as safetensors does.
void rewrite_safetensors_header(const fs::path& file, const std::function<void(nlohmann::json&)>& edit) {
  std::ifstream in(file, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  auto header = nlohmann::json::parse(bytes.substr(8, n));
  edit(header);
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  const uint64_t len = h.size();
  std::ofstream(file, std::ios::binary) << std::string(reinterpret_cast<const char*>(&len), 8) << h << bytes.substr(8 + n);
}

// Item 8: two tensors on the same bytes loaded silently.
TEST_F(BadCheckpoint, SafetensorsOverlappingTensors) {
  auto d = hf_copy();
  rewrite_safetensors_header(d / "model.safetensors", [](nlohmann::json& h) {
    h["model.layers.1.input_layernorm.weight"]["data_offsets"] = h["model.layers.0.input_layernorm.weight"]["data_offsets"];
  });
  expect_clean_failure({"--model", d.string()}, "model.safetensors", "overlap");
}

// Item 1: the shape's byte count overflowed 64 bits and could match the range by accident.
TEST_F(BadCheckpoint, SafetensorsShapeWhoseSizeOverflows) {
  auto d = hf_copy();
  rewrite_safetensors_header(d / "model.safetensors", [](nlohmann::json& h) {
    auto& t = h["model.norm.weight"];
    const uint64_t bytes = t["data_offsets"][1].get<uint64_t>() - t["data_offsets"][0].get<uint64_t>();
    // (2^62 + bytes/4) * 4 wraps to exactly `bytes`
    t["shape"] = {(int64_t(1) << 62) + int64_t(bytes / 4)};
  });
  expect_clean_failure({"--model", d.string()}, "model.safetensors", "model.norm.weight has");
}

TEST_F(BadCheckpoint, SafetensorsMisalignedTensor) {
  auto d = hf_copy();
  rewrite_safetensors_header(d / "model.safetensors", [](nlohmann::json& h) {
    auto& t = h["model.norm.weight"];
    t["data_offsets"] = {t["data_offsets"][0].get<uint64_t>() - 2, t["data_offsets"][1].get<uint64_t>() - 2};
  });
  expect_clean_failure({"--model", d.string()}, "model.safetensors", "not aligned to its 4-byte elements");
}

// Item 8: config values that loaded "fine" and produced garbage, or errors without a name.
TEST_F(BadCheckpoint, ConfigFieldsAreCheckedAndNamed) {
  struct Case { const char* field; nlohmann::json value; std::string problem; };
  const Case cases[] = {
      {"rope_theta", 0, "config.json: rope_theta is 0 (must be positive"},
      {"rope_theta", -10000.0, "config.json: rope_theta is -10000 (must be positive"},
      {"model_type", "mistral", "config.json: model_type \"mistral\" is not supported"},
      {"architectures", {"MistralForCausalLM"}, "config.json: architectures [\"MistralForCausalLM\"] is not supported"},
      {"vocab_size", 1e12, "config.json: vocab_size is 1e+12 (not a 32-bit integer)"},
      {"num_key_value_heads", "four", "config.json: \"num_key_value_heads\" must be an integer (got string)"},
      {"rms_norm_eps", "small", "config.json: \"rms_norm_eps\" must be a number (got string)"},
      {"num_key_value_heads", 3, "config.json: n_kv_heads is 3 (must divide n_heads 8)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.field);
    auto d = hf_copy();
    auto cfg = nlohmann::json::parse(read(d / "config.json"));
    cfg[c.field] = c.value;
    write(d / "config.json", cfg.dump());
    expect_clean_failure({"--model", d.string()}, "config.json", c.problem);
    fs::remove_all(d);
  }
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

// Item 1: an offset near 2^64 made data_start + offset + nbytes wrap, so the bounds check
// passed and the first forward pass read outside the map.
TEST_F(BadCheckpoint, GgufTensorOffsetThatWrapsAround) {
  std::string bytes = read(kShared + "/models/gguf/stories260K.gguf");
  const GgufLayout g = walk_gguf(bytes);
  const uint64_t wrap = ~uint64_t(0) - 4095;  // aligned, and data_start + wrap + nbytes overflows
  std::memcpy(bytes.data() + g.tensor_offset_field.at("blk.0.attn_q.weight"), &wrap, 8);
  write(dir_ / "wrap.gguf", bytes);
  expect_clean_failure({"--model", (dir_ / "wrap.gguf").string()}, "wrap.gguf", "blk.0.attn_q.weight lies past the end");
}

TEST_F(BadCheckpoint, GgufUnalignedTensorOffset) {
  std::string bytes = read(kShared + "/models/gguf/stories260K.gguf");
  const GgufLayout g = walk_gguf(bytes);
  const uint64_t off = g.tensor_offset.at("output_norm.weight") + 4;  // GGUF aligns tensors to 32 bytes
  std::memcpy(bytes.data() + g.tensor_offset_field.at("output_norm.weight"), &off, 8);
  write(dir_ / "unaligned.gguf", bytes);
  expect_clean_failure({"--model", (dir_ / "unaligned.gguf").string()}, "unaligned.gguf",
                       "output_norm.weight has offset " + std::to_string(off) + ", not a multiple of the alignment 32");
}

TEST_F(BadCheckpoint, GgufOverlappingTensors) {
  std::string bytes = read(kShared + "/models/gguf/stories260K.gguf");
  const GgufLayout g = walk_gguf(bytes);
  const uint64_t off = g.tensor_offset.at("blk.0.attn_q.weight");  // same shape and type as attn_output
  std::memcpy(bytes.data() + g.tensor_offset_field.at("blk.0.attn_output.weight"), &off, 8);
  write(dir_ / "overlap.gguf", bytes);
  expect_clean_failure({"--model", (dir_ / "overlap.gguf").string()}, "overlap.gguf", "overlap");
}

TEST_F(BadCheckpoint, GgufNegativeNormEpsilon) {
  std::string bytes = read(kShared + "/models/gguf/stories260K.gguf");
  const GgufLayout g = walk_gguf(bytes);
  const float eps = -0.5f;
  std::memcpy(bytes.data() + g.value_field.at("llama.attention.layer_norm_rms_epsilon"), &eps, 4);
  write(dir_ / "eps.gguf", bytes);
  expect_clean_failure({"--model", (dir_ / "eps.gguf").string()}, "eps.gguf", "norm_eps is -0.5 (must be positive");
}

TEST_F(BadCheckpoint, GgufHugeBlockCount) {
  std::string bytes = read(kShared + "/models/gguf/stories260K.gguf");
  const GgufLayout g = walk_gguf(bytes);
  const uint32_t layers = 3000000000u;  // would become a negative int
  std::memcpy(bytes.data() + g.value_field.at("llama.block_count"), &layers, 4);
  write(dir_ / "layers.gguf", bytes);
  expect_clean_failure({"--model", (dir_ / "layers.gguf").string()}, "layers.gguf", "llama.block_count is 3000000000 (not a 32-bit integer)");
}

// Item 2: open(2) on a FIFO blocks until a writer appears; a device reads without end.
TEST_F(BadCheckpoint, FifoAsModelFile) {
  const fs::path fifo = dir_ / "model.gguf";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  expect_clean_failure({"--model", fifo.string()}, "model.gguf", "not a regular file (a FIFO)");
}

TEST_F(BadCheckpoint, FifoAsConfigJson) {
  auto d = hf_copy();
  fs::remove(d / "config.json");
  ASSERT_EQ(mkfifo((d / "config.json").c_str(), 0600), 0);
  expect_clean_failure({"--model", d.string()}, "config.json", "not a regular file (a FIFO)");
}

TEST_F(BadCheckpoint, FifoAsSafetensorsShard) {
  auto d = hf_copy();
  fs::remove(d / "model.safetensors");
  write(d / "model.safetensors.index.json", R"({"weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors"}})");
  ASSERT_EQ(mkfifo((d / "model-00001-of-00001.safetensors").c_str(), 0600), 0);
  expect_clean_failure({"--model", d.string()}, "model-00001-of-00001.safetensors", "not a regular file (a FIFO)");
}

TEST_F(BadCheckpoint, CharacterDeviceAsTokenizer) {
  fs::create_symlink("/dev/zero", dir_ / "tokenizer.bin");  // symlinks are followed, then refused
  expect_clean_failure({"--model", kShared + "/models/llama2c/stories260K.bin", "--tokenizer", (dir_ / "tokenizer.bin").string()},
                       "tokenizer.bin", "not a regular file (a character device)");
}

// Item 1 for llama2.c: layers * hidden * dim overflowed int64 before the size check.
TEST_F(BadCheckpoint, Llama2cHeaderWhoseSizeOverflows) {
  int32_t h[7] = {1 << 24, 1 << 24, 1 << 24, 1, 1, 512, 256};
  write(dir_ / "huge.bin", std::string(reinterpret_cast<char*>(h), sizeof h) + std::string(4096, '\0'));
  expect_clean_failure({"--model", (dir_ / "huge.bin").string(), "--tokenizer", kShared + "/models/llama2c/tok512.bin"},
                       "huge.bin", "truncated llama2.c checkpoint");
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
