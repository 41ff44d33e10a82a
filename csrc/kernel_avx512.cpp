// AVX-512 (F/BW/VL/DQ + VNNI + BITALG: byte popcount for bits=1)
// instantiation of kernel_body.inc: one 64-byte row = 64 slots = one zmm.
// Compiled with per-file flags from CMakeLists.txt; called only after dispatch checks the CPU.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>
#include <limits>

#include "kernels.h"

namespace bebr {
namespace avx512 {

#include "simd_avx512.inc"

#include "kernel_body.inc"

uint64_t read_avx512(const uint8_t* data, size_t bytes) {
  __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
  size_t i = 0;
  for (; i + 256 <= bytes; i += 256) {
    s0 = _mm512_add_epi64(s0, _mm512_loadu_si512(data + i));
    s1 = _mm512_add_epi64(s1, _mm512_loadu_si512(data + i + 64));
    s2 = _mm512_add_epi64(s2, _mm512_loadu_si512(data + i + 128));
    s3 = _mm512_add_epi64(s3, _mm512_loadu_si512(data + i + 192));
  }
  uint64_t s = _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3)));
  for (; i < bytes; ++i) s += data[i];
  return s;
}

}  // namespace avx512

const KernelTable& kernels_avx512() {
  static const KernelTable t{"avx512", &avx512::scan_simd, &avx512::read_avx512, nullptr};
  return t;
}

}  // namespace bebr
