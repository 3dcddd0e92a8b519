// The INT4 backend inside libtorch, the way KleidiAI sits inside PyTorch: two custom
// operators,
//   cpuchat::int4_pack(Tensor weight, str scheme, Tensor? column_importance) -> Tensor
//                                                                at load: quantize + repack
//   cpuchat::int4_linear(Tensor x, Tensor packed) -> Tensor      per call: int8 x int4 matmul
// The packed tensor is a uint8 blob: a kHeaderBytes header (kernels::PackedHeader) and the
// kernels' 64-byte aligned packed weights. int4_linear quantizes x once, then splits the
// output columns over libtorch's own thread pool (at::parallel_for), so the kernels never
// compete with libtorch for cores.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <malloc.h>

#include <atomic>
#include <cstring>

#include "cpuchat_kernels/int4_matmul.h"
#include "model/anonymous_memory.h"
#include "model/gguf_quant.h"
#include "model/model.h"

namespace cpuchat {

namespace kn = cpuchat::kernels;

namespace {

constexpr int64_t kHeaderBytes = 64;  // keeps the blob 64-byte aligned after the header
static_assert(sizeof(kn::PackedHeader) <= kHeaderBytes, "header must fit its slot");

kn::PackedWeights view_of(const torch::Tensor& packed) {
  TORCH_CHECK(packed.scalar_type() == torch::kUInt8 && packed.dim() == 1 && packed.numel() > kHeaderBytes,
              "int4_linear: not a packed int4 tensor");
  kn::PackedHeader header;
  std::memcpy(&header, packed.data_ptr<uint8_t>(), sizeof header);
  TORCH_CHECK(uint64_t(packed.numel() - kHeaderBytes) >= header.byte_size, "int4_linear: packed tensor is truncated");
  return kn::PackedWeights::view(header, packed.data_ptr<uint8_t>() + kHeaderBytes);
}

// The packed tensor of `w`: header + blob (w's scratch is freed).
torch::Tensor blob_of(kn::PackedWeights w) {
  torch::Tensor out = anonymous_bytes(kHeaderBytes + int64_t(w.byte_size()));  // zero-filled
  std::memcpy(out.data_ptr<uint8_t>(), &w.header(), sizeof(kn::PackedHeader));
  std::memcpy(out.data_ptr<uint8_t>() + kHeaderBytes, w.data(), w.byte_size());
  w = kn::PackedWeights();
  malloc_trim(0);  // give the scratch back to the OS now, so loading an 8B model stays small
  return out;
}

torch::Tensor int4_pack_op(const torch::Tensor& weight, c10::string_view scheme_name,
                           const c10::optional<torch::Tensor>& column_importance) {
  TORCH_CHECK(weight.dim() == 2, "int4_pack: weight must be 2-D [N, K]");
  TORCH_CHECK(scheme_name == "q4c" || scheme_name == "q4g32" || scheme_name == "q4k",
              "int4_pack: scheme must be q4g32, q4c or q4k");
  const kn::Scheme scheme = scheme_name == "q4c" ? kn::Scheme::Q4C : scheme_name == "q4k" ? kn::Scheme::Q4K : kn::Scheme::Q4G32;
  const int64_t n = weight.size(0), k = weight.size(1);
  // Pack into a scratch owner, then copy once into the tensor, keeping the blob aligned.
  kn::PackedWeights w = kn::PackedWeights::allocate(n, k, scheme);
  torch::Tensor src = weight.is_contiguous() ? weight : weight.contiguous();
  if (src.scalar_type() != torch::kBFloat16 && src.scalar_type() != torch::kFloat32) src = src.to(torch::kFloat32);
  torch::Tensor importance;
  if (column_importance && column_importance->defined()) {
    TORCH_CHECK(column_importance->dim() == 1 && column_importance->size(0) == k,
                "int4_pack: column_importance must have K = ", k, " values");
    importance = column_importance->to(torch::kFloat32).contiguous();
  }
  const float* imp = importance.defined() ? importance.data_ptr<float>() : nullptr;
  // A GGUF Q4_K tensor packs into q4k exactly, from its own blocks (see gguf_quant.h).
  const std::unique_ptr<gguf::ExactQ4kSource> exact = scheme == kn::Scheme::Q4K ? gguf::take_exact_q4k(src) : nullptr;
  // Row blocks are independent: pack them on libtorch's threads.
  const int64_t align = w.row_alignment(), blocks = (n + align - 1) / align;
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    const int64_t r0 = b0 * align, r1 = std::min(n, b1 * align);
    if (exact)
      gguf::pack_exact_q4k(*exact, w, r0, r1);
    else if (src.scalar_type() == torch::kBFloat16)
      w.pack_rows_bf16(reinterpret_cast<const uint16_t*>(src.data_ptr()) + r0 * k, k, r0, r1, imp);
    else
      w.pack_rows(src.data_ptr<float>() + r0 * k, k, r0, r1, imp);
  });
  return blob_of(std::move(w));
}

torch::Tensor int4_linear_op(const torch::Tensor& x_in, const torch::Tensor& packed) {
  const kn::PackedWeights w = view_of(packed);
  TORCH_CHECK(x_in.size(-1) == w.k(), "int4_linear: x has ", x_in.size(-1), " features, weights expect ", w.k());
  torch::Tensor x = x_in.to(torch::kFloat32).contiguous();
  const int64_t m = x.numel() / w.k(), n = w.n();
  // Buffers reused across calls. A named reference, because the lambdas below run on pool
  // threads, where the name of a thread_local would mean their own, empty, instance.
  thread_local kn::QuantizedActivations thread_xq;
  kn::QuantizedActivations& xq = thread_xq;
  xq.resize(m, w.k());
  const float* xp = x.data_ptr<float>();
  at::parallel_for(0, m, 16, [&](int64_t r0, int64_t r1) { xq.quantize_rows(xp, w.k(), r0, r1); });
  auto sizes = x_in.sizes().vec();
  sizes.back() = n;
  torch::Tensor y = torch::empty(sizes, torch::kFloat32);
  float* yp = y.data_ptr<float>();
  // Column chunks are handed out on demand, not split once per thread: a pool thread woken from
  // sleep starts tens of microseconds late, and with a fixed half each call waited for it.
  // Measured on Zen 5, 1B, 2 threads (median step): 1 row 30.9 / 41.8 -> 25.1 / 27.0 ms,
  // 8 rows 57.7 / 50.9 -> 47.1 / 42.6 ms. Each column is computed the same way whichever
  // thread takes it, so results do not change.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t blocks = kn::block_count(w.layout(), n);
  const int64_t chunks = threads == 1 ? 1 : std::max(threads, std::min(threads * 8, blocks / 4));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
      const kn::ColumnRange cols = kn::split_columns(w, chunks, c);
      if (!cols.empty()) kn::matmul(xq, w, yp, n, cols.begin, cols.end);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(cpuchat, m) {
  m.def("int4_pack(Tensor weight, str scheme, Tensor? column_importance=None) -> Tensor", int4_pack_op);
  m.def("int4_linear(Tensor x, Tensor packed) -> Tensor", int4_linear_op);
}

namespace {

class Int4Linear : public Linear {
 public:
  explicit Int4Linear(torch::Tensor packed) : packed_(std::move(packed)) {}
  torch::Tensor forward(const torch::Tensor& x) const override {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("cpuchat::int4_linear", "")
                         .typed<torch::Tensor(const torch::Tensor&, const torch::Tensor&)>();
    return op.call(x, packed_);
  }
  int64_t weight_bytes() const override { return packed_.numel() - kHeaderBytes; }

 private:
  torch::Tensor packed_;
};

}  // namespace

torch::Tensor int4_pack(const torch::Tensor& weight, QuantScheme quant, const torch::Tensor& column_importance) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("cpuchat::int4_pack", "")
          .typed<torch::Tensor(const torch::Tensor&, c10::string_view, const c10::optional<torch::Tensor>&)>();
  return op.call(weight, quant_name(quant),
                 column_importance.defined() ? c10::optional<torch::Tensor>(column_importance) : c10::nullopt);
}

torch::Tensor gguf::pack_q4k_blob(const ExactQ4kSource& source) {
  kn::PackedWeights w = kn::PackedWeights::allocate(source.n, source.k, kn::Scheme::Q4K);
  const int64_t align = w.row_alignment(), blocks = (source.n + align - 1) / align;
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    gguf::pack_exact_q4k(source, w, b0 * align, std::min(source.n, b1 * align));
  });
  return blob_of(std::move(w));
}

std::unique_ptr<Linear> make_int4_linear(torch::Tensor packed) {
  view_of(packed);  // validates now rather than on the first token
  return std::make_unique<Int4Linear>(std::move(packed));
}

bool int4_packed_shape_is(const torch::Tensor& packed, int64_t n, int64_t k) {
  const kn::PackedWeights w = view_of(packed);
  return w.n() == n && w.k() == k;
}

std::string int4_isa_name() { return kn::active_isa_name(); }

}  // namespace cpuchat
