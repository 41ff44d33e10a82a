// Run-time SIMD dispatch: the level is chosen once (first use) from the CPU features, or forced
// by the environment variable BEBR_SIMD=scalar|avx2|avx512|amx; set_simd_level() switches it later
// (tests). Every kernel call goes through active_kernels().
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels.h"

namespace bebr {

// x86 CPU features (CPUID) and the register state the OS saves (XCR0), one bit each.
enum CpuFeature : uint64_t {
  kSse3 = 1ull << 0, kSsse3 = 1ull << 1, kSse41 = 1ull << 2, kSse42 = 1ull << 3, kPopcnt = 1ull << 4,
  kXsave = 1ull << 5, kAvx = 1ull << 6, kAvx2 = 1ull << 7,
  kAvx512F = 1ull << 8, kAvx512Bw = 1ull << 9, kAvx512Dq = 1ull << 10, kAvx512Vl = 1ull << 11,
  kAvx512Vnni = 1ull << 12, kAvx512Bitalg = 1ull << 13, kAvx512Vbmi = 1ull << 14,
  kAmxTile = 1ull << 15, kAmxInt8 = 1ull << 16,
  kOsYmm = 1ull << 17,  // XCR0: SSE + AVX state (bits 1, 2)
  kOsZmm = 1ull << 18,  // XCR0: opmask + ZMM state (bits 5, 6, 7)
  kOsAmx = 1ull << 19,  // XCR0 tile state (bits 17, 18) and Linux granted XTILEDATA to the process
};

// The features each level's kernel file is compiled for (CMakeLists.txt COMPILE_OPTIONS, with
// what GCC implies: -mavx2 brings SSE3..SSE4.2, XSAVE, AVX) plus the OS state it needs. A level
// is available only with every one of its bits.
constexpr uint64_t kLevelAvx2 = kSse3 | kSsse3 | kSse41 | kSse42 | kPopcnt | kXsave | kAvx | kAvx2 | kOsYmm;
constexpr uint64_t kLevelAvx512 =
    kLevelAvx2 | kAvx512F | kAvx512Bw | kAvx512Dq | kAvx512Vl | kAvx512Vnni | kAvx512Bitalg | kOsZmm;
constexpr uint64_t kLevelAmx = kLevelAvx512 | kAvx512Vbmi | kAmxTile | kAmxInt8 | kOsAmx;

// Levels a CPU with these features runs, lowest first ("scalar" always; pure: no CPUID, and
// regardless of what this build compiled in).
std::vector<std::string> levels_for(uint64_t features);
// This CPU's features (CPUID, XGETBV; asks Linux for the AMX tile state if the CPU has AMX).
uint64_t cpu_features();

// Levels compiled in and supported by this CPU, lowest first ("scalar" always).
std::vector<std::string> available_simd_levels();
// Name of the active level.
std::string simd_level_name();
// Switch to a level; throws std::invalid_argument if unknown or unavailable.
void set_simd_level(const std::string& name);
// The active function table.
const KernelTable& active_kernels();
// Table of a named level (throws std::invalid_argument if unavailable).
const KernelTable& kernels_for(const std::string& name);

}  // namespace bebr
