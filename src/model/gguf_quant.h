// GGUF quantized tensor types (ggml block formats) for the GGUF loader: sizes, decoding to
// fp32, and the exact Q4_K -> q4k mapping (no float round trip). Written from the block
// layouts of ggml's ggml-common.h / dequantize_row_* (llama.cpp).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cpuchat_kernels/int4_matmul.h"
#include "model/mapped_file.h"

namespace cpuchat::gguf {

enum GgmlType : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8,
  kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kBF16 = 30,
};

struct QuantType {
  const char* name;
  int block_size;  // weights per block (along the row)
  int type_size;   // bytes per block
};
// nullptr for a type that is not one of the supported quantized types.
const QuantType* quant_type(uint32_t type);
// Bytes of an [n, k] tensor of quantized `type`; throws a one-line error naming `tensor` if
// the row length is not a multiple of the block size (e.g. a K-quant row not a multiple of 256).
uint64_t quantized_bytes(uint32_t type, int64_t n, int64_t k, const std::string& tensor);

// Decodes one row of k values (k a multiple of the block size).
void dequantize_row(uint32_t type, const uint8_t* src, float* dst, int64_t k);
// A new fp32 [n, k] tensor (shape as the checkpoint uses it: rows first).
torch::Tensor dequantize(uint32_t type, const uint8_t* data, int64_t n, int64_t k);

// One Q4_K row (k / 256 blocks of 144 bytes) as q4k super-blocks, exactly.
void q4k_super_blocks_from_q4_K(const uint8_t* row, int64_t k, kernels::Q4kSuperBlock* out);

// Exact repacking: the loader registers, for a dequantized Q4_K tensor, where its blocks are
// (and the row order, if the loader permuted rows); int4 packing with q4k takes it back and
// packs the blocks themselves. An entry is only used if the tensor it is taken for still
// holds exactly the dequantized blocks (checked row by row), so a stale entry cannot apply
// to another tensor.
struct ExactQ4kSource {
  std::shared_ptr<MappedFile> file;  // keeps `data` mapped
  const uint8_t* data = nullptr;     // row-major Q4_K blocks, n rows of k / 256 blocks
  int64_t n = 0, k = 0;
  std::vector<int64_t> source_row;   // destination row r comes from block row source_row[r] (empty: r)
};
void register_exact_q4k(const torch::Tensor& dequantized, ExactQ4kSource source);
// Removes and returns the entry for `w` if there is one and `w` matches it; else nullptr.
std::unique_ptr<ExactQ4kSource> take_exact_q4k(const torch::Tensor& w);
// Packs rows [row_begin, row_end) of `source` into `packed` (q4k) exactly.
void pack_exact_q4k(const ExactQ4kSource& source, kernels::PackedWeights& packed, int64_t row_begin, int64_t row_end);
// The whole tensor as an int4_pack q4k blob (header + packed weights), never in float
// (src/model/int4_ops.cpp, which owns the blob format).
torch::Tensor pack_q4k_blob(const ExactQ4kSource& source);

}  // namespace cpuchat::gguf
