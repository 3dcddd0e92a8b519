// ggml block formats (see gguf_quant.h). Each decoder does the fp32 operations of ggml's
// dequantize_row_* in the same order, so the fp32 weights are llama.cpp's own.
#include "model/gguf_quant.h"

#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>

namespace cpuchat::gguf {

namespace kn = cpuchat::kernels;

namespace {

float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return kn::fp16_to_float(h);
}

// Q4_K / Q5_K 12-byte packing of 8 6-bit scales and mins (ggml's get_scale_min_k4).
void scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void row_q4_0(const uint8_t* b, float* y, int64_t blocks) {
  for (int64_t i = 0; i < blocks; ++i, b += 18, y += 32) {
    const float d = half(b);
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>((b[2 + j] & 0xF) - 8) * d;
      y[j + 16] = static_cast<float>((b[2 + j] >> 4) - 8) * d;
    }
  }
}
void row_q4_1(const uint8_t* b, float* y, int64_t blocks) {
  for (int64_t i = 0; i < blocks; ++i, b += 20, y += 32) {
    const float d = half(b), m = half(b + 2);
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>(b[4 + j] & 0xF) * d + m;
      y[j + 16] = static_cast<float>(b[4 + j] >> 4) * d + m;
    }
  }
}
void row_q5(const uint8_t* b, float* y, int64_t blocks, bool with_min) {
  const int head = with_min ? 4 : 2, size = with_min ? 24 : 22;
  for (int64_t i = 0; i < blocks; ++i, b += size, y += 32) {
    const float d = half(b), m = with_min ? half(b + 2) : 0.0f;
    uint32_t qh;
    std::memcpy(&qh, b + head, 4);
    const uint8_t* qs = b + head + 4;
    for (int j = 0; j < 16; ++j) {
      const int x0 = (qs[j] & 0xF) | static_cast<int>(((qh >> j) << 4) & 0x10);
      const int x1 = (qs[j] >> 4) | static_cast<int>((qh >> (j + 12)) & 0x10);
      if (with_min) {
        y[j] = static_cast<float>(x0) * d + m;
        y[j + 16] = static_cast<float>(x1) * d + m;
      } else {
        y[j] = static_cast<float>(x0 - 16) * d;
        y[j + 16] = static_cast<float>(x1 - 16) * d;
      }
    }
  }
}
void row_q8_0(const uint8_t* b, float* y, int64_t blocks) {
  for (int64_t i = 0; i < blocks; ++i, b += 34, y += 32) {
    const float d = half(b);
    for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
  }
}
void row_q4_K(const uint8_t* b, float* y, int64_t blocks) {
  for (int64_t i = 0; i < blocks; ++i, b += 144) {
    const float d = half(b), dmin = half(b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* q = b + 16;
    for (int j = 0; j < 256; j += 64, q += 32) {
      uint8_t sc, m;
      scale_min_k4(j / 32, scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      scale_min_k4(j / 32 + 1, scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}
void row_q5_K(const uint8_t* b, float* y, int64_t blocks) {
  for (int64_t i = 0; i < blocks; ++i, b += 176) {
    const float d = half(b), dmin = half(b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* qh = b + 16;
    const uint8_t* ql = b + 48;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0; j < 256; j += 64, ql += 32, u1 <<= 2, u2 <<= 2) {
      uint8_t sc, m;
      scale_min_k4(j / 32, scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      scale_min_k4(j / 32 + 1, scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
    }
  }
}
void row_q6_K(const uint8_t* b, float* y, int64_t blocks) {
  for (int64_t i = 0; i < blocks; ++i, b += 210) {
    const float d = half(b + 208);
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
    for (int n = 0; n < 256; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
        y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
        y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
        y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
      }
    }
  }
}

}  // namespace

const QuantType* quant_type(uint32_t type) {
  static const std::map<uint32_t, QuantType> kTypes = {
      {kQ4_0, {"Q4_0", 32, 18}}, {kQ4_1, {"Q4_1", 32, 20}},   {kQ5_0, {"Q5_0", 32, 22}},
      {kQ5_1, {"Q5_1", 32, 24}}, {kQ8_0, {"Q8_0", 32, 34}},   {kQ4_K, {"Q4_K", 256, 144}},
      {kQ5_K, {"Q5_K", 256, 176}}, {kQ6_K, {"Q6_K", 256, 210}},
  };
  auto it = kTypes.find(type);
  return it == kTypes.end() ? nullptr : &it->second;
}

uint64_t quantized_bytes(uint32_t type, int64_t n, int64_t k, const std::string& tensor) {
  const QuantType* t = quant_type(type);
  if (t == nullptr) throw std::runtime_error("tensor " + tensor + ": unknown quantized type " + std::to_string(type));
  if (k % t->block_size != 0) {
    throw std::runtime_error("tensor " + tensor + " is " + t->name + " but its rows have " + std::to_string(k) +
                             " values, not a multiple of the " + std::to_string(t->block_size) + "-value block");
  }
  return uint64_t(n) * uint64_t(k / t->block_size) * uint64_t(t->type_size);
}

void dequantize_row(uint32_t type, const uint8_t* src, float* dst, int64_t k) {
  const QuantType* t = quant_type(type);
  if (t == nullptr || k % t->block_size != 0) throw std::invalid_argument("dequantize_row: bad type or row length");
  const int64_t blocks = k / t->block_size;
  switch (type) {
    case kQ4_0: row_q4_0(src, dst, blocks); break;
    case kQ4_1: row_q4_1(src, dst, blocks); break;
    case kQ5_0: row_q5(src, dst, blocks, false); break;
    case kQ5_1: row_q5(src, dst, blocks, true); break;
    case kQ8_0: row_q8_0(src, dst, blocks); break;
    case kQ4_K: row_q4_K(src, dst, blocks); break;
    case kQ5_K: row_q5_K(src, dst, blocks); break;
    case kQ6_K: row_q6_K(src, dst, blocks); break;
    default: break;
  }
}

torch::Tensor dequantize(uint32_t type, const uint8_t* data, int64_t n, int64_t k) {
  torch::Tensor out = torch::empty({n, k}, torch::kFloat32);
  const uint64_t row_bytes = quantized_bytes(type, 1, k, "?");
  float* y = out.data_ptr<float>();
  at::parallel_for(0, n, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) dequantize_row(type, data + r * row_bytes, y + r * k, k);
  });
  return out;
}

void q4k_super_blocks_from_q4_K(const uint8_t* row, int64_t k, kn::Q4kSuperBlock* out) {
  for (int64_t s = 0; s < k / 256; ++s, row += 144) {
    kn::Q4kSuperBlock& b = out[s];
    std::memcpy(&b.d, row, 2);
    std::memcpy(&b.dmin, row + 2, 2);
    for (int j = 0; j < 8; ++j) scale_min_k4(j, row + 4, &b.sc[j], &b.m[j]);
    const uint8_t* q = row + 16;
    for (int pair = 0; pair < 4; ++pair, q += 32) {  // sub-blocks 2p (low nibbles), 2p+1 (high)
      for (int l = 0; l < 32; ++l) {
        b.q[64 * pair + l] = q[l] & 0xF;
        b.q[64 * pair + 32 + l] = q[l] >> 4;
      }
    }
  }
}

namespace {
std::mutex g_mutex;
std::map<const void*, ExactQ4kSource> g_exact;  // keyed by the dequantized tensor's data
}  // namespace

void register_exact_q4k(const torch::Tensor& dequantized, ExactQ4kSource source) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_exact[dequantized.data_ptr()] = std::move(source);
}

std::unique_ptr<ExactQ4kSource> take_exact_q4k(const torch::Tensor& w) {
  if (!w.defined() || w.dim() != 2 || w.scalar_type() != torch::kFloat32 || !w.is_contiguous()) return nullptr;
  std::unique_ptr<ExactQ4kSource> src;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_exact.find(w.data_ptr());
    if (it == g_exact.end()) return nullptr;
    src = std::make_unique<ExactQ4kSource>(std::move(it->second));
    g_exact.erase(it);
  }
  if (src->n != w.size(0) || src->k != w.size(1)) return nullptr;
  // Only if w still holds exactly these blocks' values.
  const int64_t row_bytes = src->k / 256 * 144;
  std::vector<float> row(static_cast<size_t>(src->k));
  const float* wp = w.data_ptr<float>();
  for (int64_t r = 0; r < src->n; ++r) {
    const int64_t from = src->source_row.empty() ? r : src->source_row[r];
    dequantize_row(kQ4_K, src->data + from * row_bytes, row.data(), src->k);
    if (std::memcmp(row.data(), wp + r * src->k, row.size() * sizeof(float)) != 0) return nullptr;
  }
  return src;
}

void pack_exact_q4k(const ExactQ4kSource& source, kn::PackedWeights& packed, int64_t row_begin, int64_t row_end) {
  const int64_t supers = source.k / 256, row_bytes = supers * 144;
  std::vector<kn::Q4kSuperBlock> blocks(static_cast<size_t>((row_end - row_begin) * supers));
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t from = source.source_row.empty() ? r : source.source_row[r];
    q4k_super_blocks_from_q4_K(source.data + from * row_bytes, source.k, blocks.data() + (r - row_begin) * supers);
  }
  packed.pack_q4k_super_blocks(blocks.data(), row_begin, row_end);
}

}  // namespace cpuchat::gguf
