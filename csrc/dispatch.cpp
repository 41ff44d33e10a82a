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

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

// AMX-INT8 + AVX-512 VBMI on the CPU, and the OS grants this process the AMX tile state
// (Linux: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), asked once).
bool cpu_has_amx() {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__linux__) && defined(SYS_arch_prctl)
  static const bool ok = [] {
    if (!cpu_has_avx512() || !__builtin_cpu_supports("avx512vbmi")) return false;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool tile = (d >> 24) & 1, int8 = (d >> 25) & 1;
    if (!tile || !int8) return false;
    constexpr long kReqXcompPerm = 0x1023, kXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

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

std::vector<std::string> available_simd_levels() {
  std::vector<std::string> out{"scalar"};
#ifdef BEBR_HAVE_AVX2
  if (cpu_has_avx2()) out.push_back("avx2");
#endif
#ifdef BEBR_HAVE_AVX512
  if (cpu_has_avx512()) out.push_back("avx512");
#endif
#ifdef BEBR_HAVE_AMX
  if (cpu_has_amx()) out.push_back("amx");
#endif
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
