#include "dispatch.h"
namespace bebr {
std::string simd_level_name() { return "scalar"; }
}
