// cpuchat INT4 kernel library: int8 (activations) x int4 (weights) matmul on CPUs.
//
//   Y[M, N] (fp32) = X[M, K] (fp32) . W[N, K]^T
//
// Load time:  PackedWeights w = PackedWeights::allocate(N, K, Scheme::Q4G32);
//             for each chunk of rows (multiple of w.row_alignment()):
//               w.pack_rows(src_rows, ld, row_begin, row_end);      // fp32 or bf16 rows
//             (or PackedWeights::view(header, mmapped_bytes) for a serialized blob)
// Per call:   QuantizedActivations xq; xq.quantize(x, M, K, ldx);     // once per matmul
//             split [0, N) with split_columns() across threads, then on each thread
//               matmul(xq, w, y, ldy, cols.begin, cols.end);          // no threads inside
//
// All errors (bad dimensions, misaligned ranges, mismatched K, bad serialized headers) throw
// std::invalid_argument with a message; nothing is read or written out of bounds.
//
// Numerics: every ISA computes exactly the same fp32 result (see reference.h):
//   dot_g  = sum over the 32 K of group g of q_x * q_w        (exact int32)
//   Q4G32: acc = fma(float(dot_g), scale_w[n][g] * scale_x[m][g], acc) for g = 0, 1, ...
//   Q4C  : acc = fma(float(dot_g), scale_x[m][g], acc) ...;  y = acc * scale_w[n]
//   Q4K  : acc = fma(float(dot_g), (d sc_g) * scale_x, acc); acc = fma(-(dmin m_g), scale_x * sum_x, acc)
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>

#include "cpuchat_kernels/isa.h"
#include "cpuchat_kernels/packed_layout.h"

namespace cpuchat::kernels {

const char* scheme_name(Scheme s);
const char* layout_name(LayoutId id);

// The layout the kernels of `level` read (every level of one architecture shares one).
LayoutId layout_for_isa(IsaLevel level);

// ---------------------------------------------------------------------------------------
// Packed weights: ONE contiguous 64-byte aligned blob + this header (write both to a file,
// use them later from an mmap through PackedWeights::view).
struct PackedHeader {
  static constexpr uint32_t kMagic = 0x34514343;  // "CCQ4"
  static constexpr uint32_t kVersion = 2;  // 2: q4g32/q4c scales searched (same bytes), q4k
  uint32_t magic = kMagic;
  uint32_t version = kVersion;
  int64_t n = 0;            // output channels (rows of W)
  int64_t k = 0;            // inputs (columns of W)
  Scheme scheme = Scheme::Q4G32;
  LayoutId layout = LayoutId::X86_N16K4;
  uint64_t byte_size = 0;   // size of the blob in bytes
};
static_assert(sizeof(PackedHeader) == 40 && std::is_trivially_copyable_v<PackedHeader>,
              "PackedHeader is written to files as raw bytes: fixed size, no padding");

// One row's Q4K super-block, unpacked: w ~= fp16(d) * sc[j] * q[i] - fp16(dmin) * m[j],
// j = i / 32 (the Q4_K arithmetic; reference.h has the quantizer).
struct Q4kSuperBlock {
  uint16_t d = 0, dmin = 0;                                             // fp16 bits
  uint8_t sc[kGroupsPerSuperBlock] = {}, m[kGroupsPerSuperBlock] = {};  // 0..63
  uint8_t q[kSuperBlockSize] = {};                                      // 0..15
};

class PackedWeights {
 public:
  PackedWeights() = default;
  // Owning, zero-filled buffer for N x K in `layout` (default: the active ISA's layout).
  static PackedWeights allocate(int64_t n, int64_t k, Scheme scheme);
  static PackedWeights allocate(int64_t n, int64_t k, Scheme scheme, LayoutId layout);
  // Non-owning view over external memory (e.g. an mmap); `data` must be 64-byte aligned,
  // hold header.byte_size bytes and outlive the view. The header is validated.
  static PackedWeights view(const PackedHeader& header, const void* data);

  // Quantizes and packs rows [row_begin, row_end) of W. `rows` points at row row_begin,
  // consecutive rows are `ld` elements apart (ld >= K). row_begin must be a multiple of
  // row_alignment(); row_end too, unless it is N. Disjoint ranges may be packed concurrently.
  // column_importance: null, or K non-negative weights of the input channels (e.g. E[x_k^2]
  // of the activations column k meets); the scale searches weight each value's error by it.
  void pack_rows(const float* rows, int64_t ld, int64_t row_begin, int64_t row_end,
                 const float* column_importance = nullptr);
  // Same from bf16 rows (raw uint16_t bf16 bits), e.g. straight from a checkpoint.
  void pack_rows_bf16(const uint16_t* rows, int64_t ld, int64_t row_begin, int64_t row_end,
                      const float* column_importance = nullptr);
  // Q4K only: stores already-quantized super-blocks exactly (e.g. a GGUF Q4_K tensor, no
  // float round trip). `blocks` holds (row_end - row_begin) x ceil(K / 256) super-blocks in
  // row order; same row-range rules as pack_rows. Values out of range (sc, m > 63, q > 15)
  // are an error.
  void pack_q4k_super_blocks(const Q4kSuperBlock* blocks, int64_t row_begin, int64_t row_end);
  // Convenience: pack all N rows.
  void pack(const float* w, int64_t ld) { pack_rows(w, ld, 0, n()); }

  const PackedHeader& header() const { return header_; }
  const uint8_t* data() const { return data_; }
  uint64_t byte_size() const { return header_.byte_size; }
  int64_t n() const { return header_.n; }
  int64_t k() const { return header_.k; }
  Scheme scheme() const { return header_.scheme; }
  const Layout& layout() const { return *find_layout(header_.layout); }
  int64_t row_alignment() const { return layout().nr; }  // nr
  bool owns_memory() const { return static_cast<bool>(owned_); }
  bool empty() const { return data_ == nullptr; }

 private:
  template <typename Src>
  void pack_rows_impl(const Src* rows, int64_t ld, int64_t row_begin, int64_t row_end, const float* column_importance);

  PackedHeader header_{};
  std::shared_ptr<uint8_t> owned_;  // null for a view
  uint8_t* data_ = nullptr;         // writable only when owned
};

// ---------------------------------------------------------------------------------------
// Activations quantized to int8, symmetric, one fp32 scale per block of 32 K values per row:
// x ~= scale * q, q in [-127, 127]. Buffers are reused across calls (no allocation once
// large enough).
class QuantizedActivations {
 public:
  // Quantizes all M rows (x row i at x + i * ldx).
  void quantize(const float* x, int64_t m, int64_t k, int64_t ldx);
  // For splitting the quantization itself across threads: resize() once, then
  // quantize_rows() on disjoint row ranges (x points at row 0).
  void resize(int64_t m, int64_t k);
  void quantize_rows(const float* x, int64_t ldx, int64_t row_begin, int64_t row_end);

  int64_t m() const { return m_; }
  int64_t k() const { return k_; }
  int64_t k_padded() const { return k_padded_; }  // multiple of kActivationKAlign, zero-filled
  int64_t groups() const { return k_padded_ / kGroupSize; }
  const int8_t* row(int64_t i) const { return q_.get() + i * k_padded_; }
  const float* scales(int64_t i) const { return scales_.get() + i * groups(); }
  // -8 * sum(q) of each block: the correction for Offset8 weight nibbles (q+8).
  const int32_t* neg8_sums(int64_t i) const { return neg8_sums_.get() + i * groups(); }

 private:
  int64_t m_ = 0, k_ = 0, k_padded_ = 0;
  size_t capacity_rows_bytes_ = 0, capacity_groups_ = 0;
  std::unique_ptr<int8_t[], void (*)(void*)> q_{nullptr, nullptr};
  std::unique_ptr<float[]> scales_;
  std::unique_ptr<int32_t[]> neg8_sums_;
};

// ---------------------------------------------------------------------------------------
// Y[m_begin:m_end, n_begin:n_end] for row-major Y with leading dimension ldy (>= N).
// n_begin and n_end must be multiples of w.row_alignment() or equal to N.
// Uses the active ISA's kernels when they can read w's layout, else the scalar kernel.
// Creates no threads: call it from the caller's thread pool on disjoint column ranges.
void matmul(const QuantizedActivations& x, const PackedWeights& w, float* y, int64_t ldy,
            int64_t n_begin, int64_t n_end);
void matmul(const QuantizedActivations& x, const PackedWeights& w, float* y, int64_t ldy,
            int64_t n_begin, int64_t n_end, int64_t m_begin, int64_t m_end);

struct ColumnRange {
  int64_t begin = 0, end = 0;
  bool empty() const { return begin >= end; }
};
// Part `index` of `parts` balanced column ranges of [0, N), each aligned to nr (some may be
// empty when N has fewer blocks than parts).
ColumnRange split_columns(const PackedWeights& w, int64_t parts, int64_t index);

// Name of the micro-kernel matmul() would run now for these weights and M (for logs/tests).
const char* selected_kernel_name(const PackedWeights& w, int64_t m);

// Single-threaded convenience: quantize X then Y = X . W^T.
void matmul_f32(const float* x, int64_t m, int64_t ldx, const PackedWeights& w, float* y, int64_t ldy);

}  // namespace cpuchat::kernels
