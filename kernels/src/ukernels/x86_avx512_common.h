// Inline helpers shared by the AVX-512 micro-kernels (files compiled with at least
// -mavx512f -mavx512bw). `static inline`: no AVX-512 code leaks into other objects.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace cpuchat::kernels::ukernel::x86 {

// 16 bf16 -> 16 fp32 (exact: bf16 is the top half of an fp32).
static inline __m512 bf16x16_to_f32(__m256i v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}
// The same from 32-byte-aligned memory (a group's scale run).
static inline __m512 load_bf16x16_as_f32(const uint8_t* p) {
  return bf16x16_to_f32(_mm256_load_si256(reinterpret_cast<const __m256i*>(p)));
}

}  // namespace cpuchat::kernels::ukernel::x86
