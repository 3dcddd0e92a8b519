// matmul(): argument checks, kernel selection (active ISA x buffer layout), column splitting.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "cpuchat_kernels/int4_matmul.h"
#include "ukernels/ukernel.h"

namespace cpuchat::kernels {
namespace {

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument("cpuchat_kernels: " + what); }

// AMX pays off only for tall activations: every int32 leaves the tile through memory once per
// 32-K group, and below ~24 rows those tile stores cost more than the AVX-512 dot products
// they replace (Xeon, 1 thread, q4g32, N=K=4096, GOPS AMX vs AVX-512: 8 rows 264 / 341,
// 16 rows 384 / 389, 24 rows 401 / 368, 64 rows 535 / 353).
constexpr int64_t kAmxMinRows = 24;

// Q4K has its own micro-kernels (files named q4kp...).
ukernel::KernelSet q4k_kernels_for(LayoutId layout, IsaLevel level) {
  using namespace ukernel;
#if defined(__x86_64__) || defined(_M_X64)
  if (layout == LayoutId::X86_N16K4) {
    if (level == IsaLevel::AmxInt8) {  // AMX for tall activations only, as for q4g32 below
      return {"matmul_q8b32_q4kp16x4_1x16_avx512vnni", matmul_q8b32_q4kp16x4_1x16_avx512vnni,
              "matmul_q8b32_q4kp16x4_6x32_avx512vnni", matmul_q8b32_q4kp16x4_6x32_avx512vnni,
              "matmul_q8b32_q4kp16x4_16x16_amx",       matmul_q8b32_q4kp16x4_16x16_amx,
              kAmxMinRows};
    }
    if (level == IsaLevel::Avx512Vnni) {
      return {"matmul_q8b32_q4kp16x4_1x16_avx512vnni", matmul_q8b32_q4kp16x4_1x16_avx512vnni,
              "matmul_q8b32_q4kp16x4_6x32_avx512vnni", matmul_q8b32_q4kp16x4_6x32_avx512vnni};
    }
    if (level == IsaLevel::Avx2) {
      return {"matmul_q8b32_q4kp16x4_1x16_avx2", matmul_q8b32_q4kp16x4_1x16_avx2, "matmul_q8b32_q4kp16x4_4x8_avx2",
              matmul_q8b32_q4kp16x4_4x8_avx2};
    }
  }
#endif
#if defined(__aarch64__)
  if (layout == LayoutId::ARM_N8K8) {
    if (level == IsaLevel::I8mm) {
      return {"matmul_q8b32_q4kp8x8_1x8_neon_dotprod", matmul_q8b32_q4kp8x8_1x8_neon_dotprod,
              "matmul_q8b32_q4kp8x8_4x8_neon_i8mm", matmul_q8b32_q4kp8x8_4x8_neon_i8mm};
    }
    if (level == IsaLevel::Dotprod) {
      return {"matmul_q8b32_q4kp8x8_1x8_neon_dotprod", matmul_q8b32_q4kp8x8_1x8_neon_dotprod,
              "matmul_q8b32_q4kp8x8_4x8_neon_dotprod", matmul_q8b32_q4kp8x8_4x8_neon_dotprod};
    }
  }
#endif
  (void)layout;
  (void)level;
  return {"matmul_q8b32_q4kp_any_scalar", matmul_q8b32_q4kp_any_scalar, "matmul_q8b32_q4kp_any_scalar",
          matmul_q8b32_q4kp_any_scalar};
}

ukernel::KernelSet kernels_for(LayoutId layout, Scheme scheme, IsaLevel level) {
  using namespace ukernel;
  if (scheme == Scheme::Q4K) return q4k_kernels_for(layout, level);
  const KernelSet scalar{"matmul_q8b32_q4p_any_scalar", matmul_q8b32_q4p_any_scalar, "matmul_q8b32_q4p_any_scalar",
                         matmul_q8b32_q4p_any_scalar};
#if defined(__x86_64__) || defined(_M_X64)
  if (layout == LayoutId::X86_N16K4) {
    if (level == IsaLevel::AmxInt8) {
      return {"matmul_q8b32_q4p16x4_1x16_avx512vnni", matmul_q8b32_q4p16x4_1x16_avx512vnni,
              "matmul_q8b32_q4p16x4_6x32_avx512vnni", matmul_q8b32_q4p16x4_6x32_avx512vnni,
              "matmul_q8b32_q4p16x4_16x16_amx",       matmul_q8b32_q4p16x4_16x16_amx,
              kAmxMinRows};
    }
    if (level == IsaLevel::Avx512Vnni) {
      return {"matmul_q8b32_q4p16x4_1x16_avx512vnni", matmul_q8b32_q4p16x4_1x16_avx512vnni,
              "matmul_q8b32_q4p16x4_6x32_avx512vnni", matmul_q8b32_q4p16x4_6x32_avx512vnni};
    }
    if (level == IsaLevel::Avx2) {
      return {"matmul_q8b32_q4p16x4_1x16_avx2", matmul_q8b32_q4p16x4_1x16_avx2, "matmul_q8b32_q4p16x4_4x8_avx2",
              matmul_q8b32_q4p16x4_4x8_avx2};
    }
  }
#endif
#if defined(__aarch64__)
  if (layout == LayoutId::ARM_N8K8) {
    if (level == IsaLevel::I8mm) {
      return {"matmul_q8b32_q4p8x8_1x8_neon_dotprod", matmul_q8b32_q4p8x8_1x8_neon_dotprod,
              "matmul_q8b32_q4p8x8_4x8_neon_i8mm", matmul_q8b32_q4p8x8_4x8_neon_i8mm};
    }
    if (level == IsaLevel::Dotprod) {
      return {"matmul_q8b32_q4p8x8_1x8_neon_dotprod", matmul_q8b32_q4p8x8_1x8_neon_dotprod,
              "matmul_q8b32_q4p8x8_4x8_neon_dotprod", matmul_q8b32_q4p8x8_4x8_neon_dotprod};
    }
  }
#endif
  (void)layout;
  (void)level;
  return scalar;
}

}  // namespace

const char* selected_kernel_name(const PackedWeights& w, int64_t m) {
  if (w.empty()) return "none";
  const ukernel::KernelSet set = kernels_for(w.header().layout, w.scheme(), active_isa());
  return set.name_for(m);
}

void matmul(const QuantizedActivations& x, const PackedWeights& w, float* y, int64_t ldy, int64_t n_begin,
            int64_t n_end) {
  matmul(x, w, y, ldy, n_begin, n_end, 0, x.m());
}

void matmul(const QuantizedActivations& x, const PackedWeights& w, float* y, int64_t ldy, int64_t n_begin,
            int64_t n_end, int64_t m_begin, int64_t m_end) {
  if (w.empty()) fail("matmul: empty weights");
  if (x.m() <= 0) fail("matmul: activations not quantized");
  if (x.k() != w.k()) fail("matmul: activations K=" + std::to_string(x.k()) + " but weights K=" + std::to_string(w.k()));
  if (x.groups() < weight_groups(w.layout(), w.scheme(), w.k())) fail("matmul: activations padded to fewer K than the weights");
  const Layout& l = w.layout();
  const int64_t n = w.n();
  if (y == nullptr || ldy < n) fail("matmul: null Y or ldy " + std::to_string(ldy) + " < N " + std::to_string(n));
  if (n_begin < 0 || n_end > n || n_begin > n_end || (n_begin != n && n_begin % l.nr != 0) ||
      (n_end != n && n_end % l.nr != 0)) {
    fail("matmul: columns [" + std::to_string(n_begin) + ", " + std::to_string(n_end) + ") of N=" + std::to_string(n) +
         " must be aligned to " + std::to_string(l.nr));
  }
  if (m_begin < 0 || m_end > x.m() || m_begin > m_end) {
    fail("matmul: rows [" + std::to_string(m_begin) + ", " + std::to_string(m_end) + ") of M=" + std::to_string(x.m()));
  }
  if (n_begin == n_end || m_begin == m_end) return;

  const ukernel::KernelSet set = kernels_for(w.header().layout, w.scheme(), active_isa());
  ukernel::Args args{};
  args.block_bytes = block_bytes(l, w.scheme(), w.k());
  args.w = w.data() + (n_begin / l.nr) * args.block_bytes;
  args.n_cols = n_end - n_begin;
  args.n_blocks = (args.n_cols + l.nr - 1) / l.nr;
  args.groups = weight_groups(l, w.scheme(), w.k());
  args.scheme = w.scheme();
  args.layout = &l;
  args.a = x.row(m_begin);
  args.a_stride = x.k_padded();
  args.a_scales = x.scales(m_begin);
  args.a_neg8_sums = x.neg8_sums(m_begin);
  args.a_groups_stride = x.groups();
  args.m = m_end - m_begin;
  args.y = y + m_begin * ldy + n_begin;
  args.ldy = ldy;
  set.kernel_for(args.m)(args);
}

ColumnRange split_columns(const PackedWeights& w, int64_t parts, int64_t index) {
  if (w.empty()) fail("split_columns: empty weights");
  if (parts <= 0 || index < 0 || index >= parts) {
    fail("split_columns: part " + std::to_string(index) + " of " + std::to_string(parts));
  }
  const int64_t nr = w.layout().nr, blocks = block_count(w.layout(), w.n());
  // Balanced in blocks: the first (blocks % parts) parts get one extra block.
  const int64_t base = blocks / parts, extra = blocks % parts;
  const int64_t b0 = index * base + std::min(index, extra), b1 = b0 + base + (index < extra ? 1 : 0);
  return {std::min(b0 * nr, w.n()), std::min(b1 * nr, w.n())};
}

void matmul_f32(const float* x, int64_t m, int64_t ldx, const PackedWeights& w, float* y, int64_t ldy) {
  if (w.empty()) fail("matmul_f32: empty weights");
  QuantizedActivations xq;
  xq.quantize(x, m, w.k(), ldx);
  matmul(xq, w, y, ldy, 0, w.n());
}

}  // namespace cpuchat::kernels
