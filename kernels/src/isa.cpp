// Runtime detection of the CPU's features and the CPUCHAT_ISA / force_isa() override.
#include "cpuchat_kernels/isa.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif
#if defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1 << 13)
#endif
#endif

namespace cpuchat::kernels {
namespace {

#if defined(__x86_64__) || defined(_M_X64)
uint64_t read_xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t{edx} << 32) | eax;
}

// Linux enables the 8 KiB tile data state per process, on request (arch_prctl
// ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA); without it the first tile instruction faults.
bool request_tile_state() {
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

IsaLevel detect() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return IsaLevel::Scalar;
  const bool osxsave = ecx & (1u << 27), avx = ecx & (1u << 28), fma = ecx & (1u << 12);
  if (!osxsave || !avx) return IsaLevel::Scalar;
  const uint64_t xcr0 = read_xcr0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;     // XMM | YMM state
  const bool os_zmm = (xcr0 & 0xE6) == 0xE6;   // + opmask, ZMM_Hi256, Hi16_ZMM
  if (!os_ymm || __get_cpuid_max(0, nullptr) < 7) return IsaLevel::Scalar;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  const bool avx2 = ebx & (1u << 5);
  const bool avx512f = ebx & (1u << 16), avx512bw = ebx & (1u << 30), avx512vl = ebx & (1u << 31);
  const bool avx512vnni = ecx & (1u << 11);
  const bool gfni = ecx & (1u << 8), amx_tile = edx & (1u << 24), amx_int8 = edx & (1u << 25);
  const bool os_tiles = (xcr0 & 0x60000) == 0x60000;  // XTILECFG | XTILEDATA
  if (os_zmm && avx2 && fma && avx512f && avx512bw && avx512vl && avx512vnni) {
    if (gfni && amx_tile && amx_int8 && os_tiles && request_tile_state()) return IsaLevel::AmxInt8;
    return IsaLevel::Avx512Vnni;
  }
  if (avx2 && fma) return IsaLevel::Avx2;
  return IsaLevel::Scalar;
}
constexpr IsaLevel kArchLevels[] = {IsaLevel::Scalar, IsaLevel::Avx2, IsaLevel::Avx512Vnni, IsaLevel::AmxInt8};
#elif defined(__aarch64__)
IsaLevel detect() {
#if defined(__linux__)
  const unsigned long hwcap = getauxval(AT_HWCAP), hwcap2 = getauxval(AT_HWCAP2);
  const bool dotprod = hwcap & HWCAP_ASIMDDP, i8mm = hwcap2 & HWCAP2_I8MM;
  if (dotprod && i8mm) return IsaLevel::I8mm;
  if (dotprod) return IsaLevel::Dotprod;
#endif
  return IsaLevel::Scalar;
}
constexpr IsaLevel kArchLevels[] = {IsaLevel::Scalar, IsaLevel::Dotprod, IsaLevel::I8mm};
#else
IsaLevel detect() { return IsaLevel::Scalar; }
constexpr IsaLevel kArchLevels[] = {IsaLevel::Scalar};
#endif

// Rank of a level within this architecture's chain, -1 for the other architecture's levels.
int rank(IsaLevel level) {
  int r = 0;
  for (IsaLevel l : kArchLevels) {
    if (l == level) return r;
    ++r;
  }
  return -1;
}

IsaLevel clamp_to_supported(IsaLevel wanted) {
  const IsaLevel best = detected_isa();
  const int r = rank(wanted);
  if (r < 0 || r > rank(best)) return best;
  return wanted;
}

IsaLevel default_level() {
  const char* env = std::getenv("CPUCHAT_ISA");
  if (env == nullptr || *env == '\0') return detected_isa();
  IsaLevel wanted;
  if (!parse_isa(env, &wanted)) {
    std::fprintf(stderr, "cpuchat_kernels: unknown CPUCHAT_ISA=%s, using %s\n", env, isa_name(detected_isa()));
    return detected_isa();
  }
  return clamp_to_supported(wanted);
}

std::atomic<int>& active_slot() {
  static std::atomic<int> slot{static_cast<int>(default_level())};
  return slot;
}

}  // namespace

const char* isa_name(IsaLevel level) {
  switch (level) {
    case IsaLevel::Scalar: return "scalar";
    case IsaLevel::Avx2: return "avx2";
    case IsaLevel::Avx512Vnni: return "avx512vnni";
    case IsaLevel::Dotprod: return "dotprod";
    case IsaLevel::I8mm: return "i8mm";
    case IsaLevel::AmxInt8: return "amx";
  }
  return "unknown";
}

bool parse_isa(const std::string& name, IsaLevel* level) {
  for (IsaLevel l : {IsaLevel::Scalar, IsaLevel::Avx2, IsaLevel::Avx512Vnni, IsaLevel::AmxInt8, IsaLevel::Dotprod,
                     IsaLevel::I8mm}) {
    if (name == isa_name(l)) {
      *level = l;
      return true;
    }
  }
  return false;
}

IsaLevel detected_isa() {
  static const IsaLevel level = detect();
  return level;
}

std::vector<IsaLevel> supported_isas() {
  std::vector<IsaLevel> out;
  for (IsaLevel l : kArchLevels) {
    if (rank(l) <= rank(detected_isa())) out.push_back(l);
  }
  return out;
}

IsaLevel active_isa() { return static_cast<IsaLevel>(active_slot().load(std::memory_order_relaxed)); }

IsaLevel force_isa(IsaLevel level) {
  const IsaLevel used = clamp_to_supported(level);
  active_slot().store(static_cast<int>(used), std::memory_order_relaxed);
  return used;
}

IsaLevel reset_isa() {
  const IsaLevel used = default_level();
  active_slot().store(static_cast<int>(used), std::memory_order_relaxed);
  return used;
}

}  // namespace cpuchat::kernels
