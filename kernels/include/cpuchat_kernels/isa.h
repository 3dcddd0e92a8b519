// Runtime ISA selection for the int4 kernels.
//
// The library is compiled for the baseline of its architecture; only the micro-kernel files
// get ISA flags. At run time the best level the CPU (and OS) supports is detected:
//   x86-64 : cpuid (+ XGETBV: the OS must save YMM / ZMM state)  -> scalar < avx2 < avx512vnni < amx
//            (amx = AMX-INT8 tiles + GFNI for the GEMM on top of avx512vnni; on Linux the process
//            must also be granted the tile state, which detection asks for)
//   aarch64: getauxval(AT_HWCAP / AT_HWCAP2)                       -> scalar < dotprod < i8mm
// The environment variable CPUCHAT_ISA=scalar|avx2|avx512vnni|amx|dotprod|i8mm (read once) or
// force_isa() selects a LOWER level; asking for an unsupported level gives the best supported
// level at or below it (a level of the other architecture gives the best supported level).
#pragma once

#include <string>
#include <vector>

namespace cpuchat::kernels {

enum class IsaLevel : int { Scalar = 0, Avx2, Avx512Vnni, Dotprod, I8mm, AmxInt8 };

const char* isa_name(IsaLevel level);
// Parses "scalar", "avx2", ...; returns false for an unknown name.
bool parse_isa(const std::string& name, IsaLevel* level);

// Best level of this CPU, ignoring CPUCHAT_ISA and force_isa().
IsaLevel detected_isa();
// Levels this CPU can run, lowest first (always starts with Scalar).
std::vector<IsaLevel> supported_isas();
// The level matmul() uses now.
IsaLevel active_isa();
inline const char* active_isa_name() { return isa_name(active_isa()); }
// Forces a level (clamped as described above); returns the level actually in use.
// Process-wide: intended for tests, benchmarks and start-up configuration.
IsaLevel force_isa(IsaLevel level);
// Back to the CPUCHAT_ISA / detected default.
IsaLevel reset_isa();

}  // namespace cpuchat::kernels
