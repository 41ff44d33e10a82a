// Run-time SIMD level selection. Placeholder until the kernel lands.
#pragma once
#include <string>
namespace bebr {
std::string simd_level_name();
}
