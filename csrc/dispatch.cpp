// CPU feature detection and the active kernel table (baseline flags, no SIMD code here).
#include "dispatch.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace bebr {
namespace {

const KernelTable* pick_default() {
  const char* env = std::getenv("BEBR_SIMD");
  if (env && *env) return &kernels_for(env);  // throws on a bad value: surfaced at import
  const auto levels = available_simd_levels();
  return &kernels_for(levels.back());
}

std::atomic<const KernelTable*>& active_slot() {
  static std::atomic<const KernelTable*> slot{pick_default()};
  return slot;
}

}  // namespace

std::vector<std::string> levels_for(uint64_t f) {
  auto has = [f](uint64_t need) { return (f & need) == need; };
  std::vector<std::string> out{"scalar"};
  if (has(kLevelAvx2)) out.push_back("avx2");
  if (has(kLevelAvx512)) out.push_back("avx512");
  if (has(kLevelAmx)) out.push_back("amx");
  return out;
}

uint64_t cpu_features() {
#if defined(__x86_64__) || defined(__i386__)
  static const uint64_t features = [] {
    uint64_t f = 0;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    auto bit = [](unsigned reg, int i) { return ((reg >> i) & 1u) != 0; };
    if (bit(c, 0)) f |= kSse3;
    if (bit(c, 9)) f |= kSsse3;
    if (bit(c, 19)) f |= kSse41;
    if (bit(c, 20)) f |= kSse42;
    if (bit(c, 23)) f |= kPopcnt;
    if (bit(c, 26)) f |= kXsave;
    if (bit(c, 28)) f |= kAvx;
    uint64_t xcr0 = 0;
    if (bit(c, 27)) {  // OSXSAVE: XGETBV is usable
      unsigned lo = 0, hi = 0;
      __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
      xcr0 = (uint64_t(hi) << 32) | lo;
    }
    if ((xcr0 & 0x6) == 0x6) f |= kOsYmm;
    if ((xcr0 & 0xe6) == 0xe6) f |= kOsZmm;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
      if (bit(b, 5)) f |= kAvx2;
      if (bit(b, 16)) f |= kAvx512F;
      if (bit(b, 17)) f |= kAvx512Dq;
      if (bit(b, 30)) f |= kAvx512Bw;
      if (bit(b, 31)) f |= kAvx512Vl;
      if (bit(c, 1)) f |= kAvx512Vbmi;
      if (bit(c, 11)) f |= kAvx512Vnni;
      if (bit(c, 12)) f |= kAvx512Bitalg;
      if (bit(d, 24)) f |= kAmxTile;
      if (bit(d, 25)) f |= kAmxInt8;
    }
#if defined(__linux__) && defined(SYS_arch_prctl)
    // AMX tile data is off until the process asks (Linux: ARCH_REQ_XCOMP_PERM, XTILEDATA)
    if ((f & (kAmxTile | kAmxInt8)) == (kAmxTile | kAmxInt8) && (xcr0 & 0x60000) == 0x60000) {
      constexpr long kReqXcompPerm = 0x1023, kXtiledata = 18;
      if (syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) == 0) f |= kOsAmx;
    }
#endif
    return f;
  }();
  return features;
#else
  return 0;
#endif
}

std::vector<std::string> available_simd_levels() {
  std::vector<std::string> out;
  for (const auto& l : levels_for(cpu_features())) {
#ifndef BEBR_HAVE_AVX2
    if (l == "avx2") continue;
#endif
#ifndef BEBR_HAVE_AVX512
    if (l == "avx512") continue;
#endif
#ifndef BEBR_HAVE_AMX
    if (l == "amx") continue;
#endif
    out.push_back(l);
  }
  return out;
}

const KernelTable& kernels_for(const std::string& name) {
  const auto levels = available_simd_levels();
  bool ok = false;
  for (const auto& l : levels) ok = ok || l == name;
  if (!ok) {
    std::string msg = "SIMD level '" + name + "' is not available on this build/CPU; available:";
    for (const auto& l : levels) msg += " " + l;
    throw std::invalid_argument(msg);
  }
#ifdef BEBR_HAVE_AMX
  if (name == "amx") return kernels_amx();
#endif
#ifdef BEBR_HAVE_AVX512
  if (name == "avx512") return kernels_avx512();
#endif
#ifdef BEBR_HAVE_AVX2
  if (name == "avx2") return kernels_avx2();
#endif
  return kernels_scalar();
}

std::string simd_level_name() { return active_kernels().name; }

void set_simd_level(const std::string& name) { active_slot().store(&kernels_for(name)); }

const KernelTable& active_kernels() { return *active_slot().load(); }

}  // namespace bebr
