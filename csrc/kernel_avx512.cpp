// AVX-512 (F/BW/VL/DQ + VNNI; BITALG byte popcount for bits=1 when the CPU has it)
// instantiation of kernel_body.inc: one 64-byte row = 64 slots = one zmm.
// Compiled with per-file flags from CMakeLists.txt; called only after dispatch checks the CPU.
#include <immintrin.h>

#include <cstring>
#include <vector>
#include <limits>

#include "kernels.h"

namespace bebr {
namespace avx512 {

using V = __m512i;
constexpr int VB = 64;          // bytes per vector
constexpr int NH = kBlock / VB; // vectors per 64-byte row
constexpr int NI = VB / 4;      // int32 lanes per vector

static inline V v_load(const void* p) { return _mm512_loadu_si512(p); }
static inline void v_store(void* p, V x) { _mm512_storeu_si512(p, x); }
static inline V v_bcast16(const uint8_t* p) {
  return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
static inline V v_zero() { return _mm512_setzero_si512(); }
static inline V v_set1_8(int x) { return _mm512_set1_epi8(static_cast<char>(x)); }
static inline V v_set1_32(int x) { return _mm512_set1_epi32(x); }
static inline V v_and(V a, V b) { return _mm512_and_si512(a, b); }
static inline V v_srli16_4(V a) { return _mm512_srli_epi16(a, 4); }
static inline V v_srli16_8(V a) { return _mm512_srli_epi16(a, 8); }
static inline V v_slli16_8(V a) { return _mm512_slli_epi16(a, 8); }
static inline V v_add8(V a, V b) { return _mm512_add_epi8(a, b); }
static inline V v_add16(V a, V b) { return _mm512_add_epi16(a, b); }
static inline V v_sub16(V a, V b) { return _mm512_sub_epi16(a, b); }
static inline V v_add32(V a, V b) { return _mm512_add_epi32(a, b); }
static inline V v_sll32(V a, int s) { return _mm512_sll_epi32(a, _mm_cvtsi32_si128(s)); }
static inline V v_shuffle(V lut, V idx) { return _mm512_shuffle_epi8(lut, idx); }
static inline V v_unpacklo16z(V a) { return _mm512_unpacklo_epi16(a, _mm512_setzero_si512()); }
static inline V v_unpackhi16z(V a) { return _mm512_unpackhi_epi16(a, _mm512_setzero_si512()); }
static inline V v_dp(V acc, V u8, int32_t s8x4) {  // VNNI: acc += dot4(u8, s8)
  return _mm512_dpbusd_epi32(acc, u8, _mm512_set1_epi32(s8x4));
}
static inline uint32_t v_mask_ge_i32(V x, int32_t thr) {
  return _mm512_cmpge_epi32_mask(x, _mm512_set1_epi32(thr));
}
static inline uint32_t v_mask_ge_ps(V x, const float* inv, float thr, float* keys) {
  const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(x), _mm512_loadu_ps(inv));
  _mm512_storeu_ps(keys, f);
  return _mm512_cmp_ps_mask(f, _mm512_set1_ps(thr), _CMP_GE_OQ);
}

static inline V v_xor(V a, V b) { return _mm512_xor_si512(a, b); }
static inline V v_sub32(V a, V b) { return _mm512_sub_epi32(a, b); }
static inline V v_popcnt8(V a) { return _mm512_popcnt_epi8(a); }  // BITALG
static bool has_popcnt8() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bitalg") != 0;
  }();
  return ok;
}
#define BEBR_HAVE_POPCNT8 1

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
  static const KernelTable t{"avx512", &avx512::scan_simd, &avx512::read_avx512};
  return t;
}

}  // namespace bebr
