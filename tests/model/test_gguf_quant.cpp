// Quantized GGUF files (issue 14), made here: a small GGUF writer and reference quantizers
// for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (blocks of 32) and Q4_K, Q5_K, Q6_K (super-blocks of 256),
// written from the block layouts of ggml's ggml-common.h, plus their decoders written from
// the same description. Checks:
//   - the loader's fp32 weights are exactly the test's decoded values: an fp32 forward of the
//     quantized file gives bit-identical logits to one of an F32 file holding the decoded values;
//   - Q4_K -> q4k is repacked exactly: the packed bytes equal packing the decoded super-blocks;
//   - the int4 backend on a quantized file stays close to the dequantized fp32 forward;
//   - bad quantized blocks are one-line errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/run_process.h"
#include "cpuchat/engine.h"
#include "cpuchat_kernels/reference.h"
#include "model/checkpoint.h"
#include "model/model.h"

using namespace cpuchat;
namespace fs = std::filesystem;
namespace kn = cpuchat::kernels;

namespace {

const std::string kShared = CPUCHAT_SHARED_DIR;

enum Type : uint32_t { F32 = 0, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14 };

uint16_t f16(float v) { return kn::float_to_fp16(v); }
float from_f16(uint16_t h) { return kn::fp16_to_float(h); }
void put16(std::string& s, uint16_t v) { s.append(reinterpret_cast<const char*>(&v), 2); }
int nearest(float v) { return static_cast<int>(std::lround(v)); }

// ---- reference quantizers (plain max/min rules) and decoders, one block at a time ----------

// Blocks of 32: x = d * (q - offset) [+ m for the _1 types], 4 or 5 bits, or 8 bits for Q8_0.
std::string quantize_32(Type t, const float* x) {
  std::string b;
  float lo = x[0], hi = x[0], extreme = 0;
  for (int i = 0; i < 32; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    if (std::fabs(x[i]) > std::fabs(extreme)) extreme = x[i];
  }
  const bool five = t == Q5_0 || t == Q5_1, with_min = t == Q4_1 || t == Q5_1;
  const int levels = five ? 32 : 16;
  int q[32];
  if (t == Q8_0) {
    const float d = std::fabs(extreme) / 127;
    put16(b, f16(d));
    const float dd = from_f16(f16(d));
    for (int i = 0; i < 32; ++i) b.push_back(static_cast<char>(dd ? std::clamp(nearest(x[i] / dd), -127, 127) : 0));
    return b;
  }
  if (with_min) {
    const float d = (hi - lo) / (levels - 1);
    put16(b, f16(d));
    put16(b, f16(lo));
    const float dd = from_f16(f16(d)), mm = from_f16(f16(lo));
    for (int i = 0; i < 32; ++i) q[i] = dd ? std::clamp(nearest((x[i] - mm) / dd), 0, levels - 1) : 0;
  } else {
    const float d = extreme / -(levels / 2);
    put16(b, f16(d));
    const float dd = from_f16(f16(d));
    for (int i = 0; i < 32; ++i) q[i] = dd ? std::clamp(nearest(x[i] / dd) + levels / 2, 0, levels - 1) : levels / 2;
  }
  if (five) {
    uint32_t qh = 0;
    for (int i = 0; i < 32; ++i) qh |= uint32_t(q[i] >> 4) << i;  // bit i: value i's 5th bit
    b.append(reinterpret_cast<const char*>(&qh), 4);
  }
  for (int j = 0; j < 16; ++j) b.push_back(static_cast<char>((q[j] & 15) | (q[j + 16] & 15) << 4));
  return b;
}

void decode_32(Type t, const uint8_t* b, float* y) {
  const float d = from_f16(uint16_t(b[0] | b[1] << 8));
  if (t == Q8_0) {
    for (int i = 0; i < 32; ++i) y[i] = float(int8_t(b[2 + i])) * d;
    return;
  }
  const bool five = t == Q5_0 || t == Q5_1, with_min = t == Q4_1 || t == Q5_1;
  const float m = with_min ? from_f16(uint16_t(b[2] | b[3] << 8)) : 0.0f;
  const uint8_t* p = b + (with_min ? 4 : 2);
  uint32_t qh = 0;
  if (five) {
    std::memcpy(&qh, p, 4);
    p += 4;
  }
  for (int i = 0; i < 32; ++i) {
    int q = i < 16 ? (p[i] & 15) : (p[i - 16] >> 4);
    if (five) q |= int((qh >> i) & 1) << 4;
    const int offset = with_min ? 0 : (five ? 16 : 8);
    y[i] = with_min ? float(q) * d + m : float(q - offset) * d;
  }
}

// The 12-byte packing of 8 6-bit scales and mins of Q4_K/Q5_K: j < 4 in the low 6 bits of
// bytes j (scale) and j+4 (min); j >= 4: low 4 bits in byte j+4 (scale low, min high), the
// top 2 bits in the top 2 bits of bytes j-4 (scale) and j (min).
void pack_scales_k(const uint8_t* sc, const uint8_t* mn, uint8_t* out) {
  std::memset(out, 0, 12);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      out[j] |= sc[j] & 63;
      out[j + 4] |= mn[j] & 63;
    } else {
      out[j + 4] = static_cast<uint8_t>((sc[j] & 15) | (mn[j] & 15) << 4);
      out[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
      out[j] |= static_cast<uint8_t>((mn[j] >> 4) << 6);
    }
  }
}
void unpack_scales_k(const uint8_t* q, uint8_t* sc, uint8_t* mn) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      sc[j] = q[j] & 63;
      mn[j] = q[j + 4] & 63;
    } else {
      sc[j] = static_cast<uint8_t>((q[j + 4] & 15) | (q[j - 4] >> 6) << 4);
      mn[j] = static_cast<uint8_t>((q[j + 4] >> 4) | (q[j] >> 6) << 4);
    }
  }
}

// Q4_K / Q5_K: per 32, x = d sc q - dmin m (q in [0, 15] / [0, 31]).
std::string quantize_k_asym(Type t, const float* x) {
  const int levels = t == Q5_K ? 32 : 16;
  float scale[8], minv[8], max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    float lo = 0, hi = x[32 * j];  // the offset never goes above 0 (m >= 0)
    for (int i = 0; i < 32; ++i) lo = std::min(lo, x[32 * j + i]), hi = std::max(hi, x[32 * j + i]);
    scale[j] = (hi - lo) / (levels - 1);
    minv[j] = -lo;
    max_scale = std::max(max_scale, scale[j]);
    max_min = std::max(max_min, minv[j]);
  }
  const uint16_t d = f16(max_scale / 63), dmin = f16(max_min / 63);
  uint8_t sc[8], mn[8];
  int q[256];
  for (int j = 0; j < 8; ++j) {
    sc[j] = uint8_t(from_f16(d) ? std::clamp(nearest(scale[j] / from_f16(d)), 0, 63) : 0);
    mn[j] = uint8_t(from_f16(dmin) ? std::clamp(nearest(minv[j] / from_f16(dmin)), 0, 63) : 0);
    const float s = from_f16(d) * sc[j], m = from_f16(dmin) * mn[j];
    for (int i = 0; i < 32; ++i) q[32 * j + i] = s ? std::clamp(nearest((x[32 * j + i] + m) / s), 0, levels - 1) : 0;
  }
  std::string b;
  put16(b, d);
  put16(b, dmin);
  uint8_t packed[12];
  pack_scales_k(sc, mn, packed);
  b.append(reinterpret_cast<const char*>(packed), 12);
  if (t == Q5_K) {  // qh[l] bit 2p: 5th bit of value 64p + l; bit 2p+1: of value 64p + 32 + l
    uint8_t qh[32] = {};
    for (int p = 0; p < 4; ++p)
      for (int l = 0; l < 32; ++l) qh[l] |= uint8_t((q[64 * p + l] >> 4) << (2 * p) | (q[64 * p + 32 + l] >> 4) << (2 * p + 1));
    b.append(reinterpret_cast<const char*>(qh), 32);
  }
  for (int p = 0; p < 4; ++p)  // 32 bytes per 64 values: low nibble value 64p + l, high 64p + 32 + l
    for (int l = 0; l < 32; ++l) b.push_back(static_cast<char>((q[64 * p + l] & 15) | (q[64 * p + 32 + l] & 15) << 4));
  return b;
}

void decode_k_asym(Type t, const uint8_t* b, float* y) {
  const float d = from_f16(uint16_t(b[0] | b[1] << 8)), dmin = from_f16(uint16_t(b[2] | b[3] << 8));
  uint8_t sc[8], mn[8];
  unpack_scales_k(b + 4, sc, mn);
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + (t == Q5_K ? 48 : 16);
  for (int p = 0; p < 4; ++p) {
    for (int half = 0; half < 2; ++half) {
      const int j = 2 * p + half;
      const float s = d * sc[j], m = dmin * mn[j];
      for (int l = 0; l < 32; ++l) {
        int q = half ? qs[32 * p + l] >> 4 : qs[32 * p + l] & 15;
        if (t == Q5_K && (qh[l] >> (2 * p + half) & 1)) q += 16;
        y[32 * j + l] = s * float(q) - m;
      }
    }
  }
}

// Q6_K: per 16, x = d sc q, sc int8, q in [-32, 31] stored +32 as 4 low bits (ql) + 2 high (qh).
std::string quantize_q6_k(const float* x) {
  float scale[16], max_abs = 0;
  for (int j = 0; j < 16; ++j) {
    float extreme = 0;
    for (int i = 0; i < 16; ++i) if (std::fabs(x[16 * j + i]) > std::fabs(extreme)) extreme = x[16 * j + i];
    scale[j] = extreme / -32;
    max_abs = std::max(max_abs, std::fabs(scale[j]));
  }
  const uint16_t d = f16(max_abs / 127);
  int8_t sc[16];
  int q[256];
  for (int j = 0; j < 16; ++j) {
    sc[j] = int8_t(from_f16(d) ? std::clamp(nearest(scale[j] / from_f16(d)), -128, 127) : 0);
    const float s = from_f16(d) * sc[j];
    for (int i = 0; i < 16; ++i) q[16 * j + i] = s ? std::clamp(nearest(x[16 * j + i] / s), -32, 31) + 32 : 32;
  }
  // Per 128 values (half h): ql[64h + l] = q[128h + l] low | q[128h + 64 + l] low << 4 and
  // ql[64h + 32 + l] = q[128h + 32 + l] low | q[128h + 96 + l] low << 4 (l < 32);
  // qh[32h + l] = high bits of q[128h + l], +32, +64, +96 at bits 0, 2, 4, 6.
  uint8_t ql[128], qh[64] = {};
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const int* v = q + 128 * h;
      ql[64 * h + l] = uint8_t((v[l] & 15) | (v[l + 64] & 15) << 4);
      ql[64 * h + 32 + l] = uint8_t((v[l + 32] & 15) | (v[l + 96] & 15) << 4);
      qh[32 * h + l] = uint8_t((v[l] >> 4) | (v[l + 32] >> 4) << 2 | (v[l + 64] >> 4) << 4 | (v[l + 96] >> 4) << 6);
    }
  std::string b(reinterpret_cast<const char*>(ql), 128);
  b.append(reinterpret_cast<const char*>(qh), 64);
  b.append(reinterpret_cast<const char*>(sc), 16);
  put16(b, d);
  return b;
}

void decode_q6_k(const uint8_t* b, float* y) {
  const float d = from_f16(uint16_t(b[208] | b[209] << 8));
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const uint8_t lo0 = b[64 * h + l], lo1 = b[64 * h + 32 + l], hi = b[128 + 32 * h + l];
      const int q[4] = {((lo0 & 15) | (hi & 3) << 4) - 32, ((lo1 & 15) | (hi >> 2 & 3) << 4) - 32,
                        ((lo0 >> 4) | (hi >> 4 & 3) << 4) - 32, ((lo1 >> 4) | (hi >> 6 & 3) << 4) - 32};
      for (int part = 0; part < 4; ++part) {
        const int idx = 128 * h + 32 * part + l;
        y[idx] = d * float(sc[idx / 16]) * float(q[part]);
      }
    }
}

int block_size(Type t) { return t == Q4_K || t == Q5_K || t == Q6_K ? 256 : 32; }

// Quantizes rows of k values; returns the blocks and fills `decoded` with what they mean.
std::string quantize_rows(Type t, const std::vector<float>& x, int64_t k, std::vector<float>* decoded) {
  std::string out;
  decoded->resize(x.size());
  const int bs = block_size(t);
  for (size_t off = 0; off < x.size(); off += bs) {
    std::string b = t == Q6_K ? quantize_q6_k(&x[off]) : bs == 256 ? quantize_k_asym(t, &x[off]) : quantize_32(t, &x[off]);
    const uint8_t* p = reinterpret_cast<const uint8_t*>(b.data());
    if (t == Q6_K) decode_q6_k(p, &(*decoded)[off]);
    else if (bs == 256) decode_k_asym(t, p, &(*decoded)[off]);
    else decode_32(t, p, &(*decoded)[off]);
    out += b;
  }
  (void)k;
  return out;
}

// ---- a minimal GGUF v3 reader (raw key/values kept verbatim) and writer --------------------

struct RawKv {
  std::string key, bytes;  // bytes: type + value, as in the file
};
struct GgufTensor {
  std::string name;
  std::vector<uint64_t> ne;  // fastest first, as stored
  Type type = F32;
  std::string data;          // encoded blocks or F32
};

struct Cursor {
  const std::string& s;
  size_t pos = 0;
  template <typename T> T get() { T v; std::memcpy(&v, s.data() + pos, sizeof v); pos += sizeof v; return v; }
  std::string str() { const uint64_t n = get<uint64_t>(); std::string r = s.substr(pos, n); pos += n; return r; }
  void skip_value(uint32_t type) {
    static const int kSizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (type == 8) str();
    else if (type == 9) {
      const uint32_t elem = get<uint32_t>();
      const uint64_t n = get<uint64_t>();
      for (uint64_t i = 0; i < n; ++i) skip_value(elem);
    } else pos += kSizes[type];
  }
};

struct Gguf {
  std::vector<RawKv> kv;
  std::vector<GgufTensor> tensors;
};

Gguf read_gguf(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string s = ss.str();
  Cursor c{s};
  c.pos = 8;
  const uint64_t n_tensors = c.get<uint64_t>(), n_kv = c.get<uint64_t>();
  Gguf g;
  for (uint64_t i = 0; i < n_kv; ++i) {
    RawKv kv;
    kv.key = c.str();
    const size_t start = c.pos;
    c.skip_value(c.get<uint32_t>());
    kv.bytes = s.substr(start, c.pos - start);
    g.kv.push_back(kv);
  }
  std::vector<uint64_t> offsets;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    t.name = c.str();
    const uint32_t dims = c.get<uint32_t>();
    for (uint32_t d = 0; d < dims; ++d) t.ne.push_back(c.get<uint64_t>());
    t.type = Type(c.get<uint32_t>());
    offsets.push_back(c.get<uint64_t>());
    g.tensors.push_back(t);
  }
  const size_t data = (c.pos + 31) / 32 * 32;
  for (size_t i = 0; i < g.tensors.size(); ++i) {
    uint64_t n = 4;
    for (uint64_t d : g.tensors[i].ne) n *= d;
    g.tensors[i].data = s.substr(data + offsets[i], n);  // F32 only (the shared files are)
  }
  return g;
}

RawKv kv_u32(const std::string& key, uint32_t v) {
  std::string b(4, '\0');
  const uint32_t type = 4;
  std::memcpy(b.data(), &type, 4);
  b.append(reinterpret_cast<const char*>(&v), 4);
  return {key, b};
}
RawKv kv_f32(const std::string& key, float v) {
  std::string b(4, '\0');
  const uint32_t type = 6;
  std::memcpy(b.data(), &type, 4);
  b.append(reinterpret_cast<const char*>(&v), 4);
  return {key, b};
}
RawKv kv_str(const std::string& key, const std::string& v) {
  std::string b(4, '\0');
  const uint32_t type = 8;
  const uint64_t n = v.size();
  std::memcpy(b.data(), &type, 4);
  b.append(reinterpret_cast<const char*>(&n), 8);
  return {key, b + v};
}

void write_gguf(const fs::path& path, const Gguf& g) {
  std::string out = "GGUF";
  auto put = [&](auto v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); };
  auto put_str = [&](const std::string& s) { put(uint64_t(s.size())); out += s; };
  put(uint32_t(3));
  put(uint64_t(g.tensors.size()));
  put(uint64_t(g.kv.size()));
  for (const auto& kv : g.kv) {
    put_str(kv.key);
    out += kv.bytes;
  }
  uint64_t offset = 0;
  for (const auto& t : g.tensors) {
    put_str(t.name);
    put(uint32_t(t.ne.size()));
    for (uint64_t d : t.ne) put(d);
    put(uint32_t(t.type));
    put(offset);
    offset += (t.data.size() + 31) / 32 * 32;
  }
  out.resize((out.size() + 31) / 32 * 32, '\0');
  for (const auto& t : g.tensors) {
    out += t.data;
    out.resize((out.size() + 31) / 32 * 32, '\0');
  }
  std::ofstream(path, std::ios::binary).write(out.data(), std::streamsize(out.size()));
}

std::vector<float> floats_of(const std::string& data) {
  std::vector<float> v(data.size() / 4);
  std::memcpy(v.data(), data.data(), data.size());
  return v;
}
std::string bytes_of(const std::vector<float>& v) { return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4); }

// Quantizes tensor t in place to `type`; `decoded_copy` gets the same tensor as F32 holding
// the decoded values.
void quantize_tensor(GgufTensor& t, Type type, GgufTensor& decoded_copy) {
  std::vector<float> decoded;
  t.data = quantize_rows(type, floats_of(t.data), int64_t(t.ne[0]), &decoded);
  t.type = type;
  decoded_copy = t;
  decoded_copy.type = F32;
  decoded_copy.data = bytes_of(decoded);
}

class GgufQuant : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cpuchat_gguf_quant_" + std::to_string(getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::vector<float> logits(const fs::path& file, Backend backend, QuantScheme quant, const std::vector<int>& ids) {
    LoadOptions o;
    o.model_path = file.string();
    o.threads = 2;
    o.backend = backend;
    o.quant = quant;
    return Engine::load(o)->logits(ids);
  }
  fs::path dir_;
};

const std::vector<int> kIds = {1, 403, 407, 261, 378, 439, 284, 324, 261, 395, 30, 13, 5};

// Relative RMS difference of two logit vectors.
double rel_rms(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, n = 0;
  for (size_t i = 0; i < a.size(); ++i) d += std::pow(a[i] - b[i], 2), n += std::pow(b[i], 2);
  return std::sqrt(d / n);
}

// stories260K with its matrices in the 32-block types (rows of 172 stay F32, as llama.cpp
// keeps tensors it cannot block): fp32 forward == fp32 forward of the decoded values, bit
// for bit; the int4 backend requantizes them and stays close.
TEST_F(GgufQuant, BlockTypesDecodeExactlyOnTheTrainedModel) {
  Gguf q = read_gguf(kShared + "/models/gguf/stories260K.gguf"), f = q;
  const Type cycle[] = {Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
  int i = 0, quantized = 0;
  for (size_t t = 0; t < q.tensors.size(); ++t) {
    if (q.tensors[t].ne.size() != 2 || q.tensors[t].ne[0] % 32 != 0) continue;
    quantize_tensor(q.tensors[t], cycle[i++ % 5], f.tensors[t]);
    ++quantized;
  }
  ASSERT_GT(quantized, 20);
  write_gguf(dir_ / "q.gguf", q);
  write_gguf(dir_ / "f.gguf", f);
  const auto lq = logits(dir_ / "q.gguf", Backend::FP32, QuantScheme::Q4G32, kIds);
  const auto lf = logits(dir_ / "f.gguf", Backend::FP32, QuantScheme::Q4G32, kIds);
  ASSERT_EQ(lq.size(), lf.size());
  EXPECT_EQ(std::memcmp(lq.data(), lf.data(), lq.size() * 4), 0) << "decoded weights differ";
  // The quantized model still knows its stories: close to the original fp32 model.
  const auto l_orig = logits(kShared + "/models/gguf/stories260K.gguf", Backend::FP32, QuantScheme::Q4G32, kIds);
  EXPECT_LT(rel_rms(lq, l_orig), 0.1);
  // The int4 backend requantizes the decoded weights: it moves the logits about as much as it
  // moves the original model's (same scheme, same activations; measured 0.159 vs 0.115).
  const auto l_int4 = logits(dir_ / "q.gguf", Backend::INT4, QuantScheme::Q4G32, kIds);
  const auto l_int4_orig = logits(kShared + "/models/gguf/stories260K.gguf", Backend::INT4, QuantScheme::Q4G32, kIds);
  std::cout << "stories260K block types: rel. RMS logit difference fp32(quantized file) vs original "
            << rel_rms(lq, l_orig) << "; int4 q4g32 vs fp32 on the quantized file " << rel_rms(l_int4, lf)
            << ", on the original " << rel_rms(l_int4_orig, l_orig) << "\n";
  EXPECT_LT(rel_rms(l_int4, lf), 2 * rel_rms(l_int4_orig, l_orig));
}

// A random model with rows of 256 and 512 values (by default), in Q4_K, Q5_K and Q6_K.
Gguf random_k_model(const Gguf& tokenizer_source, Gguf* decoded, int dim = 256, int hidden = 512, int layers = 2) {
  const int heads = 4, kv_heads = 2, vocab = 512;
  Gguf g;
  g.kv = {kv_str("general.architecture", "llama"), kv_u32("llama.embedding_length", dim),
          kv_u32("llama.feed_forward_length", hidden), kv_u32("llama.block_count", layers),
          kv_u32("llama.attention.head_count", heads), kv_u32("llama.attention.head_count_kv", kv_heads),
          kv_u32("llama.context_length", 256), kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f),
          kv_u32("llama.rope.dimension_count", dim / heads)};
  for (const auto& kv : tokenizer_source.kv)
    if (kv.key.rfind("tokenizer.", 0) == 0) g.kv.push_back(kv);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  auto tensor = [&](const std::string& name, uint64_t k, uint64_t n, Type type) {
    GgufTensor t{name, n ? std::vector<uint64_t>{k, n} : std::vector<uint64_t>{k}, F32, ""};
    std::vector<float> v(k * (n ? n : 1));
    for (float& x : v) x = n ? normal(rng) : 1.0f;
    t.data = bytes_of(v);
    GgufTensor copy = t;
    if (type != F32) quantize_tensor(t, type, copy);
    g.tensors.push_back(t);
    decoded->tensors.push_back(copy);
  };
  tensor("token_embd.weight", dim, vocab, Q5_K);
  tensor("output_norm.weight", dim, 0, F32);
  tensor("output.weight", dim, vocab, Q6_K);
  for (int l = 0; l < layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    tensor(p + "attn_norm.weight", dim, 0, F32);
    tensor(p + "ffn_norm.weight", dim, 0, F32);
    tensor(p + "attn_q.weight", dim, dim, Q4_K);
    tensor(p + "attn_k.weight", dim, dim / heads * kv_heads, Q4_K);
    tensor(p + "attn_v.weight", dim, dim / heads * kv_heads, Q4_K);
    tensor(p + "attn_output.weight", dim, dim, Q4_K);
    tensor(p + "ffn_gate.weight", dim, hidden, Q4_K);
    tensor(p + "ffn_up.weight", dim, hidden, Q4_K);
    tensor(p + "ffn_down.weight", hidden, dim, Q6_K);
  }
  decoded->kv = g.kv;
  return g;
}

TEST_F(GgufQuant, KQuantsDecodeExactlyAndQ4kRepacksWithoutFloats) {
  Gguf decoded;
  const Gguf q = random_k_model(read_gguf(kShared + "/models/gguf/stories260K.gguf"), &decoded);
  write_gguf(dir_ / "k.gguf", q);
  write_gguf(dir_ / "kf.gguf", decoded);
  const auto lq = logits(dir_ / "k.gguf", Backend::FP32, QuantScheme::Q4G32, kIds);
  const auto lf = logits(dir_ / "kf.gguf", Backend::FP32, QuantScheme::Q4G32, kIds);
  EXPECT_EQ(std::memcmp(lq.data(), lf.data(), lq.size() * 4), 0) << "decoded weights differ";

  // Exact repack: the loader's q4k blob of a Q4_K tensor == packing the test's super-blocks.
  Checkpoint ck = load_checkpoint((dir_ / "k.gguf").string());
  const std::pair<const char*, const char*> cases[] = {{"model.layers.0.mlp.gate_proj.weight", "blk.0.ffn_gate.weight"},
                                                       {"model.layers.1.self_attn.v_proj.weight", "blk.1.attn_v.weight"},
                                                       {"model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"}};
  for (const auto& [name, gguf_name] : cases) {
    const GgufTensor* src = nullptr;
    for (const auto& t : q.tensors) if (t.name == gguf_name) src = &t;
    ASSERT_NE(src, nullptr);
    const int64_t n = int64_t(src->ne[1]), k = int64_t(src->ne[0]), supers = k / 256;
    // q rows are reordered from GGUF's interleaved RoPE pairs to rotate-half: within a head of
    // 64 rows, row t*32 + i comes from row 2i + t.
    const bool reordered = std::string(name).find("q_proj") != std::string::npos;
    std::vector<kn::Q4kSuperBlock> blocks(static_cast<size_t>(n * supers));
    for (size_t b = 0; b < blocks.size(); ++b) {
      const int64_t row = int64_t(b) / supers, within = row % 64;
      const int64_t from = reordered ? row - within + 2 * (within % 32) + within / 32 : row;
      const uint8_t* p = reinterpret_cast<const uint8_t*>(src->data.data()) + 144 * (from * supers + int64_t(b) % supers);
      kn::Q4kSuperBlock& s = blocks[b];
      std::memcpy(&s.d, p, 2);
      std::memcpy(&s.dmin, p + 2, 2);
      unpack_scales_k(p + 4, s.sc, s.m);
      for (int pr = 0; pr < 4; ++pr)
        for (int l = 0; l < 32; ++l) s.q[64 * pr + l] = p[16 + 32 * pr + l] & 15, s.q[64 * pr + 32 + l] = p[16 + 32 * pr + l] >> 4;
    }
    // Bit-identical dequantized weights: the test's decoding equals the q4k reference's.
    const kn::ReferenceWeights ref = kn::reference_weights_from_q4k(blocks, n, k);
    const torch::Tensor w = ck.take(name);  // the loader's fp32 weights
    const auto wa = w.accessor<float, 2>();
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < k; ++c) ASSERT_EQ(ref.dequantized(r, c), wa[r][c]) << name << " " << r << "," << c;
    kn::PackedWeights expect = kn::PackedWeights::allocate(n, k, kn::Scheme::Q4K);
    expect.pack_q4k_super_blocks(blocks.data(), 0, n);
    const torch::Tensor packed = int4_pack(w, QuantScheme::Q4K);
    ASSERT_EQ(uint64_t(packed.numel() - 64), expect.byte_size()) << name;
    EXPECT_EQ(std::memcmp(packed.data_ptr<uint8_t>() + 64, expect.data(), expect.byte_size()), 0) << name << " not repacked exactly";
  }

  // End to end: with q4k the Q4_K tensors keep their exact weights (only the activations are
  // rounded; the Q5_K/Q6_K ones are requantized), with q4g32 every tensor is requantized: the
  // exact repack must move the logits clearly less (measured 0.10 vs 0.24 on this random model).
  const auto l_q4k = logits(dir_ / "k.gguf", Backend::INT4, QuantScheme::Q4K, kIds);
  const auto l_g32 = logits(dir_ / "k.gguf", Backend::INT4, QuantScheme::Q4G32, kIds);
  std::cout << "random K-quant model: rel. RMS logit difference vs fp32(decoded): q4k exact " << rel_rms(l_q4k, lf)
            << ", q4g32 requantized " << rel_rms(l_g32, lf) << "\n";
  EXPECT_LT(rel_rms(l_q4k, lf), 0.6 * rel_rms(l_g32, lf));
}

// Quantized tensors are decoded one at a time as the model takes them (Q4_K with q4k not at
// all), so loading a quantized file costs about the packed model plus one decoded tensor, not
// the fp32 model (which the loader used to decode whole: 4x the packed bytes and more).
// Measured as the peak RSS of `cpuchat generate` on a 60M-parameter file against the same
// command on the small one (the process's own baseline: libtorch, tokenizer, threads).
TEST_F(GgufQuant, QuantizedFilesLoadOneTensorAtATime) {
#if defined(CPUCHAT_TEST_EMULATOR)
  GTEST_SKIP() << "under an emulator the peak RSS is the emulator's";
#endif
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "ASan's quarantine keeps freed tensors resident (measured: +210 MiB)";
#endif
  const Gguf tok = read_gguf(kShared + "/models/gguf/stories260K.gguf");
  Gguf small_decoded, big_decoded;
  write_gguf(dir_ / "small.gguf", random_k_model(tok, &small_decoded));
  const int dim = 1024, hidden = 4096, layers = 4;
  write_gguf(dir_ / "big.gguf", random_k_model(tok, &big_decoded, dim, hidden, layers));
  int64_t fp32_bytes = 0, largest_fp32 = 0;
  for (const auto& t : big_decoded.tensors) {
    fp32_bytes += int64_t(t.data.size());
    largest_fp32 = std::max<int64_t>(largest_fp32, int64_t(t.data.size()));
  }
  // The process's own peak (VmHWM, in generate --json): wait4's ru_maxrss would start from
  // this test process's resident size at fork, hundreds of MB that hide the model's share.
  auto peak_bytes = [&](const fs::path& file) -> int64_t {
    const auto r = test::run_process({CPUCHAT_BINARY, "generate", "--model", file.string(), "--ids", "1,403,407",
                                      "--max-tokens", "2", "--backend", "int4", "--quant", "q4k", "--threads", "2",
                                      "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return nlohmann::json::parse(r.out)["metrics"]["peak_rss_bytes"].get<int64_t>();
  };
  const int64_t small_peak = peak_bytes(dir_ / "small.gguf"), big_peak = peak_bytes(dir_ / "big.gguf");
  const int64_t grown = big_peak - small_peak;
  // The packed model is at most the file's size (4.5-bit q4k from 4.5-bit Q4_K, 6.6-bit Q6_K
  // and 5.5-bit Q5_K requantized to 4.5), plus one fp32 tensor being decoded and packed (its
  // scratch blob too), plus 64 MiB for allocator slack: still well below the fp32 model.
  const int64_t file_bytes = int64_t(fs::file_size(dir_ / "big.gguf"));
  const int64_t bound = file_bytes + 2 * largest_fp32 + (int64_t{64} << 20);
  std::cout << "60M-parameter K-quant GGUF: peak RSS grows by " << grown / (1 << 20) << " MiB (file "
            << file_bytes / (1 << 20) << " MiB, fp32 model " << fp32_bytes / (1 << 20) << " MiB, bound "
            << bound / (1 << 20) << " MiB)\n";
  ASSERT_LT(bound, fp32_bytes);  // the bound tells streaming from decoding everything
  EXPECT_LT(grown, bound);
  EXPECT_GT(grown, file_bytes / 2) << "the packed model must show: else the measurement is blind";
}

// tokenizer.chat_template picks the chat family: the 512-piece TinyStories vocabulary alone
// says "plain", a Llama 2 [INST] template says Llama 2.
TEST_F(GgufQuant, ChatTemplateMetadataChoosesTheChatFamily) {
  Gguf g = read_gguf(kShared + "/models/gguf/stories260K.gguf");
  auto format_of = [&](const Gguf& file) {
    write_gguf(dir_ / "t.gguf", file);
    LoadOptions o;
    o.model_path = (dir_ / "t.gguf").string();
    o.backend = Backend::FP32;
    return Engine::load(o)->tokenizer().chat_format;
  };
  EXPECT_EQ(format_of(g), ChatFormat::Plain);
  g.kv.push_back(kv_str("tokenizer.chat_template", "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"));
  EXPECT_EQ(format_of(g), ChatFormat::Llama2);
  g.kv.back() = kv_str("tokenizer.chat_template", "{{ '<|start_header_id|>' }}");  // but no such tokens here
  EXPECT_EQ(format_of(g), ChatFormat::Plain);
}

TEST_F(GgufQuant, BadQuantizedTensorsAreOneLineErrors) {
  Gguf decoded;
  Gguf q = random_k_model(read_gguf(kShared + "/models/gguf/stories260K.gguf"), &decoded);
  auto expect_error = [&](const Gguf& g, const std::string& what, uintmax_t cut = 0) {
    write_gguf(dir_ / "bad.gguf", g);
    if (cut) fs::resize_file(dir_ / "bad.gguf", fs::file_size(dir_ / "bad.gguf") - cut);
    const auto r = cpuchat::test::run_process({CPUCHAT_BINARY, "logits", "--model", (dir_ / "bad.gguf").string(), "--ids", "1,2"});
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_NE(r.err.find(what), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  };
  expect_error(q, "past the end", 300);  // the last Q6_K tensor loses a block and a half
  Gguf bad = q;
  bad.tensors[0].ne = {128, 1024};  // Q5_K rows of 128 values
  expect_error(bad, "not a multiple of the Q5_K block of 256");
  bad = q;
  bad.tensors[0].type = Type(99);
  expect_error(bad, "unknown ggml type 99");
  bad = q;
  bad.tensors[0].type = Type(10);  // Q2_K: a real ggml type, not one we decode
  expect_error(bad, "unsupported ggml type Q2_K");
  bad = q;
  bad.kv[0] = kv_str("general.architecture", "qwen2");
  expect_error(bad, "unsupported architecture");
}

}  // namespace
