// Run-time SIMD dispatch: the level is chosen once (first use) from the CPU features, or forced
// by the environment variable BEBR_SIMD=scalar|avx2|avx512|amx; set_simd_level() switches it later
// (tests). Every kernel call goes through active_kernels().
#pragma once
#include <string>
#include <vector>

#include "kernels.h"

namespace bebr {

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
