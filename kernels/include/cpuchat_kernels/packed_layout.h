// The ONE definition of the packed int4 weight layouts. The packer (src/pack.cpp), the
// generic scalar kernel and every ISA micro-kernel derive offsets from these constexpr
// functions, so they cannot disagree. A micro-kernel that hard-codes a layout asserts the
// layout constants it assumes with static_assert.
//
// Weights W are [N rows = output channels][K], quantized to int4 q in [-8, 7]:
//   Q4G32: one scale per (row, group of 32 consecutive K), w ~= scale_g * q
//   Q4C  : one scale per row,                             w ~= scale   * q
// K is zero-padded to a multiple of 32 * groups_per_chunk; N is zero-padded to a multiple
// of nr (padded rows/columns have q = 0 and scale = 0, outputs for them are never written).
//
// Rows are packed in BLOCKS of nr consecutive rows. A block holds the whole K range, so a
// micro-kernel walks one block strictly sequentially from its first byte to its last.
//
// Inside a block, for one group g (32 K values of nr rows = nr*32 int4 values), the values
// are ordered as a "stream" so that one SIMD register = nr rows x kr consecutive K:
//
//     stream_index(r, k) = (k / kr) * (nr * kr) + r * kr + (k % kr)      (k = 0..31 in group)
//
//   e.g. x86 (nr=16, kr=4): |r0 k0..3|r1 k0..3|...|r15 k0..3|r0 k4..7|...   (64 values/step)
//        arm (nr=8,  kr=8): |r0 k0..7|r1 k0..7|...|r7 k0..7|r0 k8..15|...   (64 values/step)
//
// The nr*32 values of a group take nr*16 bytes. Byte i holds stream[i] in its LOW nibble
// and stream[i + nr*16] in its HIGH nibble, so `byte & 0xF` and `byte >> 4` each give a
// full register of int8 lanes with no shuffles:
//
//   group bytes:  [ byte 0 ............................. byte nr*16-1 ]
//   low  nibbles:   stream[0 .. nr*16-1]        (K steps 0 .. 32/kr/2-1)
//   high nibbles:   stream[nr*16 .. nr*32-1]    (K steps 32/kr/2 .. 32/kr-1)
//
// Nibble coding: Offset8 stores q+8 (0..15, an unsigned operand for x86 vpdpbusd/pmaddubsw;
// the kernel subtracts 8*sum(activations) of the group); TwosComplement stores q & 0xF
// (a signed operand after an arithmetic shift, for Arm sdot/smmla).
//
// Block layout, Q4G32 (gpc = groups_per_chunk; scales are bf16, one per row):
//
//   block = [ chunk 0 ][ chunk 1 ] ... [ chunk G/gpc-1 ]
//   chunk = [ scales g0: nr x bf16 ] .. [ scales g(gpc-1) ][ group g0 bytes ] .. [ group g(gpc-1) bytes ]
//
//   x86: gpc=2 -> chunk = 64 B of scales + 2 x 256 B of nibbles = 576 B (all 64-byte aligned)
//   arm: gpc=1 -> chunk = 16 B of scales + 128 B of nibbles
//
// Block layout, Q4C (fp32 scale per row, read once per block):
//
//   block = [ row scales: nr x fp32 ][ group 0 bytes ][ group 1 bytes ] ... [ group G-1 bytes ]
//
// Block layout, Q4K (K-quant class, llama.cpp Q4_K arithmetic, 4.5 bits/weight):
//   w = d * sc_j * q - dmin * m_j,  q in [0, 15] (unsigned nibble, same on every layout),
//   per row and SUPER-BLOCK of 256 K: d, dmin fp16; per 32-K sub-block j = 0..7: 6-bit sc_j, m_j.
// K is zero-padded to a multiple of 256 (padded sub-blocks: q = sc = m = 0).
//
//   block = [ super-block 0 ][ super-block 1 ] ... (K/256 of them, 144 * nr bytes each)
//   super-block = [ d: nr x fp16 ][ dmin: nr x fp16 ]          4 nr bytes
//                 [ lo4: 8 nr bytes ][ hi2: 4 nr bytes ]       12 nr bytes (6-bit sc and m)
//                 [ group j=0 bytes ] ... [ group j=7 bytes ]  8 x 16 nr bytes of nibbles
//   Value v = j * nr + r (sub-block j, row r; v < 8 nr):
//     lo4[v]        = (sc[v] & 15) | (m[v] & 15) << 4
//     hi2[v % 4nr] |= (sc[v] >> 4) << (2 * (v / 4nr))  |  (m[v] >> 4) << (4 + 2 * (v / 4nr))
//   so one 16-byte load of lo4 (and of hi2, shifted) gives sc_j / m_j of nr=16 rows in order.
//   x86: 64 + 192 + 2048 = 2304 B per super-block; arm: 32 + 96 + 1024 = 1152 B (64 B aligned).
//
// Blocks follow each other with no gap; the whole blob is padded to a multiple of 64 bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace cpuchat::kernels {

inline constexpr int kGroupSize = 32;  // K values per weight group and per activation block

enum class Scheme : uint32_t {
  Q4G32 = 1,  // int4, one bf16 scale per 32 K values per row
  Q4C = 2,    // int4, one fp32 scale per row (per output channel)
  Q4K = 3,    // asymmetric int4, 6-bit scale+min per 32, fp16 super-scale+min per 256 (Q4_K)
};

enum class LayoutId : uint32_t {
  X86_N16K4 = 1,  // x86: scalar, AVX2 and AVX-512 VNNI kernels
  ARM_N8K8 = 2,   // aarch64: scalar, NEON dotprod and i8mm kernels
};

enum class NibbleCoding : uint32_t { Offset8 = 0, TwosComplement = 1 };

struct Layout {
  LayoutId id;
  int nr;                // rows (output channels) per block
  int kr;                // consecutive K values per row in one register lane group
  NibbleCoding coding;   // how q is stored in a nibble
  int groups_per_chunk;  // Q4G32: groups sharing one run of scales (keeps loads aligned)
};

inline constexpr Layout kLayoutX86{LayoutId::X86_N16K4, 16, 4, NibbleCoding::Offset8, 2};
inline constexpr Layout kLayoutArm{LayoutId::ARM_N8K8, 8, 8, NibbleCoding::TwosComplement, 1};

// Q4K: K values per super-block and sub-blocks (groups) per super-block.
inline constexpr int kSuperBlockSize = 256;
inline constexpr int kGroupsPerSuperBlock = kSuperBlockSize / kGroupSize;

// Activations are padded with zeros to this K multiple; it covers every scheme's K padding
// (Q4K pads K to 256).
inline constexpr int64_t kActivationKAlign = kSuperBlockSize;

constexpr int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// nullptr for an unknown id (e.g. a corrupt serialized header).
constexpr const Layout* find_layout(LayoutId id) {
  return id == LayoutId::X86_N16K4 ? &kLayoutX86 : id == LayoutId::ARM_N8K8 ? &kLayoutArm : nullptr;
}

constexpr int64_t padded_k(const Layout& l, int64_t k) {
  return round_up(k, int64_t{kGroupSize} * l.groups_per_chunk);
}
constexpr int64_t group_count(const Layout& l, int64_t k) { return padded_k(l, k) / kGroupSize; }
constexpr int64_t block_count(const Layout& l, int64_t n) { return (n + l.nr - 1) / l.nr; }

// Bytes of nibbles for one group of one block.
constexpr int64_t group_bytes(const Layout& l) { return int64_t{l.nr} * kGroupSize / 2; }

// Q4G32: bytes of scales for one group (nr bf16).
constexpr int64_t group_scale_bytes(const Layout& l) { return int64_t{l.nr} * 2; }

// Q4G32: one chunk = gpc scale runs followed by gpc groups of nibbles.
constexpr int64_t chunk_bytes(const Layout& l) {
  return l.groups_per_chunk * (group_scale_bytes(l) + group_bytes(l));
}

// Q4C: per-row fp32 scales at the start of each block.
constexpr int64_t row_scale_bytes(const Layout& l) { return int64_t{l.nr} * 4; }

// Q4K: bytes of one super-block of one row block and the offsets inside it.
constexpr int64_t q4k_super_block_bytes(const Layout& l) { return int64_t{l.nr} * 144; }
constexpr int64_t q4k_d_offset() { return 0; }                                   // nr fp16
constexpr int64_t q4k_dmin_offset(const Layout& l) { return int64_t{l.nr} * 2; }  // nr fp16
constexpr int64_t q4k_lo4_offset(const Layout& l) { return int64_t{l.nr} * 4; }   // 8 nr bytes
constexpr int64_t q4k_hi2_offset(const Layout& l) { return int64_t{l.nr} * 12; }  // 4 nr bytes
constexpr int64_t q4k_groups_offset(const Layout& l) { return int64_t{l.nr} * 16; }
constexpr int64_t q4k_super_blocks(int64_t k) { return round_up(k, kSuperBlockSize) / kSuperBlockSize; }

// Weight groups of 32 K per row as packed (the kernels loop over these; padding included).
constexpr int64_t weight_groups(const Layout& l, Scheme s, int64_t k) {
  return s == Scheme::Q4K ? q4k_super_blocks(k) * kGroupsPerSuperBlock : group_count(l, k);
}

// Q4K: where the 6-bit sc / m of (sub-block j, row r) live inside a super-block.
struct Q4kScalePos {
  int64_t lo4_byte;  // low 4 bits: sc in the low nibble, m in the high nibble
  int64_t hi2_byte;  // high 2 bits: sc at bit hi2_shift, m at bit hi2_shift + 4
  int hi2_shift;
};
constexpr Q4kScalePos q4k_scale_pos(const Layout& l, int j, int r) {
  const int64_t v = int64_t{j} * l.nr + r, quarter = int64_t{l.nr} * 4;
  return {q4k_lo4_offset(l) + v, q4k_hi2_offset(l) + v % quarter, static_cast<int>(2 * (v / quarter))};
}

constexpr int64_t block_bytes(const Layout& l, Scheme s, int64_t k) {
  if (s == Scheme::Q4K) return q4k_super_blocks(k) * q4k_super_block_bytes(l);
  return s == Scheme::Q4G32 ? group_count(l, k) / l.groups_per_chunk * chunk_bytes(l)
                            : row_scale_bytes(l) + group_count(l, k) * group_bytes(l);
}

// Offset (from the block start) of group g's nibbles.
constexpr int64_t group_weights_offset(const Layout& l, Scheme s, int64_t g) {
  if (s == Scheme::Q4K) {
    return g / kGroupsPerSuperBlock * q4k_super_block_bytes(l) + q4k_groups_offset(l) +
           g % kGroupsPerSuperBlock * group_bytes(l);
  }
  if (s == Scheme::Q4C) return row_scale_bytes(l) + g * group_bytes(l);
  const int64_t chunk = g / l.groups_per_chunk, in_chunk = g % l.groups_per_chunk;
  return chunk * chunk_bytes(l) + l.groups_per_chunk * group_scale_bytes(l) + in_chunk * group_bytes(l);
}

// Q4G32: offset (from the block start) of group g's nr bf16 scales.
constexpr int64_t group_scales_offset(const Layout& l, int64_t g) {
  const int64_t chunk = g / l.groups_per_chunk, in_chunk = g % l.groups_per_chunk;
  return chunk * chunk_bytes(l) + in_chunk * group_scale_bytes(l);
}

constexpr int64_t packed_bytes(const Layout& l, Scheme s, int64_t n, int64_t k) {
  return round_up(block_count(l, n) * block_bytes(l, s, k), 64);
}

// Position of the value for row r (0..nr-1), K index k (0..31) inside a group's bytes.
struct NibblePos {
  int64_t byte;
  bool high;
};
constexpr int64_t stream_index(const Layout& l, int r, int k) {
  return int64_t{k / l.kr} * (l.nr * l.kr) + int64_t{r} * l.kr + k % l.kr;
}
constexpr NibblePos nibble_pos(const Layout& l, int r, int k) {
  const int64_t idx = stream_index(l, r, k), half = group_bytes(l);
  return {idx % half, idx >= half};
}

// Q4K stores q in [0, 15] as is, whatever the layout's coding (unsigned for vpdpbusd, and
// small enough to be a non-negative int8 for Arm sdot/smmla).
constexpr uint8_t encode_nibble(const Layout& l, int q) {
  return static_cast<uint8_t>(l.coding == NibbleCoding::Offset8 ? q + 8 : q & 0xF);
}
constexpr int decode_nibble(const Layout& l, uint8_t nib) {
  return l.coding == NibbleCoding::Offset8 ? int{nib} - 8 : (nib & 0x8 ? int{nib} - 16 : int{nib});
}

// bf16 <-> fp32 (bf16 = the top 16 bits of an fp32; rounding to nearest even).
inline float bf16_to_float(uint16_t b) {
  const uint32_t bits = uint32_t{b} << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7F800000u) == 0x7F800000u) return static_cast<uint16_t>(bits >> 16);  // inf/nan
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// IEEE fp16 <-> fp32 in plain integer code (exact; no F16C needed). Rounding to nearest
// even; overflow gives inf (callers keep values in range).
inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalize
    int e = -1;
    uint32_t m = mant;
    do {
      ++e;
      m <<= 1;
    } while ((m & 0x400u) == 0);
    bits = sign | ((112 - e) << 23) | ((m & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint16_t float_to_fp16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t abs = bits & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) return static_cast<uint16_t>(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0));
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {  // result is subnormal (or zero): value / 2^-24, rounded to nearest even
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25: rounds to 0
    const uint32_t e = abs >> 23, m = (abs & 0x7FFFFFu) | 0x800000u;
    const int shift = static_cast<int>(126 - e);  // so that m >> shift is in units of 2^-24
    const uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    const uint32_t r = q + (rem > half || (rem == half && (q & 1u)) ? 1u : 0u);
    return static_cast<uint16_t>(sign | r);
  }
  const uint32_t r = abs + 0xFFFu + ((abs >> 13) & 1u);  // round mantissa to 10 bits
  return static_cast<uint16_t>(sign | (((r >> 23) - 112) << 10) | ((r >> 13) & 0x3FFu));
}

}  // namespace cpuchat::kernels
