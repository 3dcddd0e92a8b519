// Weight quantization + packing into the layouts of packed_layout.h, and the packed buffer.
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpuchat_kernels/int4_matmul.h"
#include "cpuchat_kernels/reference.h"
#include "quantize.h"

namespace cpuchat::kernels {
namespace {

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument("cpuchat_kernels: " + what); }

void check_shape(int64_t n, int64_t k, Scheme scheme) {
  if (n <= 0 || k <= 0) fail("weight shape must be positive, got N=" + std::to_string(n) + " K=" + std::to_string(k));
  if (scheme != Scheme::Q4G32 && scheme != Scheme::Q4C && scheme != Scheme::Q4K) fail("unknown scheme " + std::to_string(int(scheme)));
  // Keep every byte offset far inside int64 and the Q4C int32 accumulations exact.
  if (n > (int64_t{1} << 31) || k > (int64_t{1} << 24)) fail("weight shape too large");
}

void check_rows(const PackedWeights& w, int64_t row_begin, int64_t row_end) {
  if (w.empty()) fail("pack_rows on an empty PackedWeights");
  if (!w.owns_memory()) fail("pack_rows on a read-only view");
  const int64_t n = w.n(), nr = w.row_alignment();
  if (row_begin < 0 || row_end > n || row_begin >= row_end || row_begin % nr != 0 || (row_end != n && row_end % nr != 0)) {
    fail("pack_rows: rows [" + std::to_string(row_begin) + ", " + std::to_string(row_end) + ") of N=" +
         std::to_string(n) + " must be non-empty and aligned to " + std::to_string(nr));
  }
}

// Writes row r's super-block b at `super` (the super-block's first byte in its row block).
void store_q4k(const Layout& l, uint8_t* super, int r, const Q4kSuperBlock& b) {
  std::memcpy(super + q4k_d_offset() + 2 * r, &b.d, 2);
  std::memcpy(super + q4k_dmin_offset(l) + 2 * r, &b.dmin, 2);
  for (int j = 0; j < kGroupsPerSuperBlock; ++j) {
    if (b.sc[j] > 63 || b.m[j] > 63) fail("q4k: 6-bit scale or min out of range");
    const Q4kScalePos p = q4k_scale_pos(l, j, r);
    super[p.lo4_byte] = static_cast<uint8_t>((b.sc[j] & 15) | (b.m[j] & 15) << 4);
    super[p.hi2_byte] = static_cast<uint8_t>(super[p.hi2_byte] | (b.sc[j] >> 4) << p.hi2_shift |
                                             (b.m[j] >> 4) << (p.hi2_shift + 4));
    uint8_t* bytes = super + q4k_groups_offset(l) + j * group_bytes(l);
    for (int kk = 0; kk < kGroupSize; ++kk) {
      const uint8_t q = b.q[j * kGroupSize + kk];
      if (q > 15) fail("q4k: quant value out of range");
      const NibblePos p = nibble_pos(l, r, kk);
      bytes[p.byte] = static_cast<uint8_t>(bytes[p.byte] | (p.high ? q << 4 : q));
    }
  }
}

float to_float(float v) { return v; }
float to_float(uint16_t bf16) { return bf16_to_float(bf16); }

}  // namespace

const char* scheme_name(Scheme s) {
  switch (s) {
    case Scheme::Q4G32: return "q4g32";
    case Scheme::Q4C: return "q4c";
    case Scheme::Q4K: return "q4k";
  }
  return "unknown";
}

const char* layout_name(LayoutId id) {
  switch (id) {
    case LayoutId::X86_N16K4: return "x86_n16k4";
    case LayoutId::ARM_N8K8: return "arm_n8k8";
  }
  return "unknown";
}

LayoutId layout_for_isa(IsaLevel level) {
  switch (level) {
    case IsaLevel::Dotprod:
    case IsaLevel::I8mm: return LayoutId::ARM_N8K8;
    case IsaLevel::Avx2:
    case IsaLevel::Avx512Vnni:
    case IsaLevel::AmxInt8: return LayoutId::X86_N16K4;
    case IsaLevel::Scalar: break;
  }
  // Scalar runs any layout: pick the architecture's native one so the blob is fast whichever
  // level is forced later.
#if defined(__aarch64__)
  return LayoutId::ARM_N8K8;
#else
  return LayoutId::X86_N16K4;
#endif
}

PackedWeights PackedWeights::allocate(int64_t n, int64_t k, Scheme scheme) {
  return allocate(n, k, scheme, layout_for_isa(active_isa()));
}

PackedWeights PackedWeights::allocate(int64_t n, int64_t k, Scheme scheme, LayoutId layout) {
  check_shape(n, k, scheme);
  const Layout* l = find_layout(layout);
  if (l == nullptr) fail("unknown layout id " + std::to_string(int(layout)));
  PackedWeights w;
  w.header_.n = n;
  w.header_.k = k;
  w.header_.scheme = scheme;
  w.header_.layout = layout;
  w.header_.byte_size = static_cast<uint64_t>(packed_bytes(*l, scheme, n, k));
  // Big blobs start on a 2 MiB boundary, in transparent huge pages where the system allows:
  // the kernels stream them, and 4 KiB pages cost a TLB miss and a prefetcher restart each.
  constexpr size_t kHugePage = size_t{2} << 20;
  const bool huge = w.header_.byte_size >= kHugePage;
  const size_t bytes = huge ? (w.header_.byte_size + kHugePage - 1) / kHugePage * kHugePage : w.header_.byte_size;
  void* p = std::aligned_alloc(huge ? kHugePage : 64, bytes);
  if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__)
  if (huge) madvise(p, bytes, MADV_HUGEPAGE);  // advice only: failure changes nothing
#endif
  std::memset(p, 0, w.header_.byte_size);
  w.owned_ = std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), std::free);
  w.data_ = w.owned_.get();
  return w;
}

PackedWeights PackedWeights::view(const PackedHeader& h, const void* data) {
  if (h.magic != PackedHeader::kMagic) fail("packed header: bad magic");
  if (h.version != PackedHeader::kVersion) fail("packed header: unsupported version " + std::to_string(h.version));
  check_shape(h.n, h.k, h.scheme);
  const Layout* l = find_layout(h.layout);
  if (l == nullptr) fail("packed header: unknown layout id " + std::to_string(int(h.layout)));
  if (h.byte_size != static_cast<uint64_t>(packed_bytes(*l, h.scheme, h.n, h.k))) {
    fail("packed header: byte_size " + std::to_string(h.byte_size) + " does not match N, K, scheme, layout");
  }
  if (data == nullptr || reinterpret_cast<uintptr_t>(data) % 64 != 0) fail("packed view: data must be 64-byte aligned");
  PackedWeights w;
  w.header_ = h;
  w.data_ = static_cast<uint8_t*>(const_cast<void*>(data));  // never written: pack_rows refuses views
  return w;
}

void PackedWeights::pack_q4k_super_blocks(const Q4kSuperBlock* blocks, int64_t row_begin, int64_t row_end) {
  check_rows(*this, row_begin, row_end);
  if (header_.scheme != Scheme::Q4K) fail("pack_q4k_super_blocks on a non-q4k buffer");
  if (blocks == nullptr) fail("pack_q4k_super_blocks: null blocks");
  const Layout& l = layout();
  const int64_t supers = q4k_super_blocks(header_.k), bytes_per_block = block_bytes(l, Scheme::Q4K, header_.k);
  for (int64_t b = row_begin / l.nr; b * l.nr < row_end; ++b) {
    uint8_t* block = data_ + b * bytes_per_block;
    std::memset(block, 0, static_cast<size_t>(bytes_per_block));
    for (int r = 0; r < l.nr && b * l.nr + r < row_end; ++r) {
      for (int64_t s = 0; s < supers; ++s) {
        store_q4k(l, block + s * q4k_super_block_bytes(l), r, blocks[(b * l.nr + r - row_begin) * supers + s]);
      }
    }
  }
}

template <typename Src>
void PackedWeights::pack_rows_impl(const Src* rows, int64_t ld, int64_t row_begin, int64_t row_end,
                                   const float* column_importance) {
  check_rows(*this, row_begin, row_end);
  const Layout& l = layout();
  const int64_t n = header_.n, k = header_.k;
  (void)n;
  if (rows == nullptr || ld < k) fail("pack_rows: null rows or ld " + std::to_string(ld) + " < K " + std::to_string(k));
  const Scheme scheme = header_.scheme;
  if (scheme == Scheme::Q4K) {
    const int64_t supers = q4k_super_blocks(k), bytes_per_block = block_bytes(l, scheme, k);
    std::vector<float> row_f32(static_cast<size_t>(k));
    std::vector<Q4kSuperBlock> row_blocks(static_cast<size_t>(supers));
    for (int64_t b = row_begin / l.nr; b * l.nr < row_end; ++b) {
      uint8_t* block = data_ + b * bytes_per_block;
      std::memset(block, 0, static_cast<size_t>(bytes_per_block));
      for (int r = 0; r < l.nr && b * l.nr + r < row_end; ++r) {
        const Src* src = rows + (b * l.nr + r - row_begin) * ld;
        for (int64_t i = 0; i < k; ++i) row_f32[i] = to_float(src[i]);
        detail::quantize_q4k_row(row_f32.data(), k, column_importance, row_blocks.data());
        for (int64_t s = 0; s < supers; ++s) store_q4k(l, block + s * q4k_super_block_bytes(l), r, row_blocks[s]);
      }
    }
    return;
  }
  const int64_t groups = group_count(l, k), kp = groups * kGroupSize;
  const int64_t bytes_per_block = block_bytes(l, scheme, k);

  // Where each (row, k-in-group) value goes: computed once from the layout definition.
  std::vector<NibblePos> pos(static_cast<size_t>(l.nr) * kGroupSize);
  for (int r = 0; r < l.nr; ++r)
    for (int kk = 0; kk < kGroupSize; ++kk) pos[r * kGroupSize + kk] = nibble_pos(l, r, kk);

  std::vector<float> row_f32(static_cast<size_t>(k));
  std::vector<int8_t> q(static_cast<size_t>(l.nr * kp));
  std::vector<float> scales(static_cast<size_t>(l.nr * (scheme == Scheme::Q4G32 ? groups : 1)));

  for (int64_t b = row_begin / l.nr; b * l.nr < row_end; ++b) {
    // 1. Quantize the block's rows (padded rows stay 0).
    std::fill(q.begin(), q.end(), 0);
    std::fill(scales.begin(), scales.end(), 0.0f);
    for (int r = 0; r < l.nr && b * l.nr + r < row_end; ++r) {
      const Src* src = rows + (b * l.nr + r - row_begin) * ld;
      for (int64_t i = 0; i < k; ++i) row_f32[i] = to_float(src[i]);
      int8_t* qr = q.data() + r * kp;
      if (scheme == Scheme::Q4G32) {
        detail::quantize_q4g32_row(row_f32.data(), k, column_importance, qr, scales.data() + r * groups);
      } else {
        scales[r] = quantize_q4(row_f32.data(), k, false, qr, column_importance);
      }
    }
    // 2. Lay the block out.
    uint8_t* block = data_ + b * bytes_per_block;
    std::memset(block, 0, static_cast<size_t>(bytes_per_block));
    if (scheme == Scheme::Q4C) std::memcpy(block, scales.data(), static_cast<size_t>(row_scale_bytes(l)));
    for (int64_t g = 0; g < groups; ++g) {
      uint8_t* bytes = block + group_weights_offset(l, scheme, g);
      for (int r = 0; r < l.nr; ++r) {
        for (int kk = 0; kk < kGroupSize; ++kk) {
          const NibblePos p = pos[r * kGroupSize + kk];
          const uint8_t nib = encode_nibble(l, q[r * kp + g * kGroupSize + kk]);
          bytes[p.byte] |= p.high ? static_cast<uint8_t>(nib << 4) : nib;
        }
        if (scheme == Scheme::Q4G32) {
          const uint16_t s = float_to_bf16(scales[r * groups + g]);  // exact: already bf16-rounded
          std::memcpy(block + group_scales_offset(l, g) + 2 * r, &s, 2);
        }
      }
    }
  }
}

void PackedWeights::pack_rows(const float* rows, int64_t ld, int64_t row_begin, int64_t row_end,
                              const float* column_importance) {
  pack_rows_impl(rows, ld, row_begin, row_end, column_importance);
}

void PackedWeights::pack_rows_bf16(const uint16_t* rows, int64_t ld, int64_t row_begin, int64_t row_end,
                                   const float* column_importance) {
  pack_rows_impl(rows, ld, row_begin, row_end, column_importance);
}

}  // namespace cpuchat::kernels
