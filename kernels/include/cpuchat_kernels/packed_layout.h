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

// Activations are padded with zeros to this K multiple; it covers every layout's K padding.
inline constexpr int64_t kActivationKAlign = 64;

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

constexpr int64_t block_bytes(const Layout& l, Scheme s, int64_t k) {
  return s == Scheme::Q4G32 ? group_count(l, k) / l.groups_per_chunk * chunk_bytes(l)
                            : row_scale_bytes(l) + group_count(l, k) * group_bytes(l);
}

// Offset (from the block start) of group g's nibbles.
constexpr int64_t group_weights_offset(const Layout& l, Scheme s, int64_t g) {
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

}  // namespace cpuchat::kernels
