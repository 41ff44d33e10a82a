// AVX2 instantiation of kernel_body.inc: one 64-byte row = 64 slots = two ymm halves.
// Compiled with per-file flags from CMakeLists.txt; called only after dispatch checks the CPU.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "kernels.h"

namespace bebr {
namespace avx2 {

using V = __m256i;
constexpr int VB = 32;
constexpr int NH = kBlock / VB;
constexpr int NI = VB / 4;

static inline V v_load(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
static inline void v_store(void* p, V x) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), x); }
static inline V v_bcast16(const uint8_t* p) {
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
static inline V v_zero() { return _mm256_setzero_si256(); }
static inline V v_set1_8(int x) { return _mm256_set1_epi8(static_cast<char>(x)); }
static inline V v_set1_32(int x) { return _mm256_set1_epi32(x); }
static inline V v_and(V a, V b) { return _mm256_and_si256(a, b); }
static inline V v_srli16_4(V a) { return _mm256_srli_epi16(a, 4); }
static inline V v_srli16_8(V a) { return _mm256_srli_epi16(a, 8); }
static inline V v_slli16_8(V a) { return _mm256_slli_epi16(a, 8); }
static inline V v_add8(V a, V b) { return _mm256_add_epi8(a, b); }
static inline V v_add16(V a, V b) { return _mm256_add_epi16(a, b); }
static inline V v_sub16(V a, V b) { return _mm256_sub_epi16(a, b); }
static inline V v_add32(V a, V b) { return _mm256_add_epi32(a, b); }
static inline V v_sll32(V a, int s) { return _mm256_sll_epi32(a, _mm_cvtsi32_si128(s)); }
static inline V v_sll16(V a, int s) { return _mm256_sll_epi16(a, _mm_cvtsi32_si128(s)); }
static inline V v_sub32(V a, V b) { return _mm256_sub_epi32(a, b); }
static inline V v_max_u16(V a, V b) { return _mm256_max_epu16(a, b); }
static inline V v_set1_16(int x) { return _mm256_set1_epi16(static_cast<short>(x)); }
// any unsigned 16-bit lane of x >= thr1 + 1 (thr1 = the threshold minus one, set1_16)
static inline bool v_any_gt_u16(V x, V thr1) {
  const V d = _mm256_subs_epu16(x, thr1);
  return !_mm256_testz_si256(d, d);
}
// the largest unsigned 16-bit lane of x
static inline int v_hmax_u16(V x) {
  const __m128i m = _mm_max_epu16(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
  return 65535 - _mm_extract_epi16(_mm_minpos_epu16(_mm_xor_si128(m, _mm_set1_epi32(-1))), 0);
}
static inline V v_shuffle(V lut, V idx) { return _mm256_shuffle_epi8(lut, idx); }
static inline V v_unpacklo16z(V a) { return _mm256_unpacklo_epi16(a, _mm256_setzero_si256()); }
static inline V v_unpackhi16z(V a) { return _mm256_unpackhi_epi16(a, _mm256_setzero_si256()); }
static inline V v_dp(V acc, V u8, int32_t s8x4) {  // acc += dot4(u8, s8); |pair| <= 450
  const __m256i p16 = _mm256_maddubs_epi16(u8, _mm256_set1_epi32(s8x4));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}
// largest of 64 floats (a NaN among them may be dropped or returned: callers treat a result
// that is not > 0 as "no bound")
static inline float v_max64_ps(const float* p) {
  __m256 m = _mm256_loadu_ps(p);
  for (int i = 8; i < 64; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(p + i));
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}
static inline uint32_t v_mask_ge_i32(V x, int32_t thr) {
  const __m256i lt = _mm256_cmpgt_epi32(_mm256_set1_epi32(thr), x);
  return ~static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(lt))) & 0xffu;
}
static inline uint32_t v_mask_ge_ps(V x, const float* inv, float thr, float* keys) {
  const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(x), _mm256_loadu_ps(inv));
  _mm256_storeu_ps(keys, f);
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(f, _mm256_set1_ps(thr), _CMP_GE_OQ)));
}

#include "kernel_body.inc"

uint64_t read_avx2(const uint8_t* data, size_t bytes) {
  __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
  size_t i = 0;
  for (; i + 128 <= bytes; i += 128) {
    s0 = _mm256_add_epi64(s0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(data + i)));
    s1 = _mm256_add_epi64(s1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(data + i + 32)));
    s2 = _mm256_add_epi64(s2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(data + i + 64)));
    s3 = _mm256_add_epi64(s3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(data + i + 96)));
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                     _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3)));
  uint64_t s = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  for (; i < bytes; ++i) s += data[i];
  return s;
}

}  // namespace avx2

const KernelTable& kernels_avx2() {
  static const KernelTable t{"avx2", &avx2::scan_simd, &avx2::read_avx2, nullptr};
  return t;
}

}  // namespace bebr
