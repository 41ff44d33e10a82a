// Per-query top-k heaps. Keys are float "larger is better" (ip: the exact integer inner
// product of scaled values; cosine: that integer times the item's inverse norm); ties go to
// the smaller id. A heap always holds k entries, starting as sentinels (-inf, INT64_MAX).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace bebr {

struct TopK {
  int k = 0;
  float* key = nullptr;  // k entries, min-heap on (key asc, id desc): root = worst kept
  int64_t* id = nullptr;

  static constexpr int64_t kNoId = std::numeric_limits<int64_t>::max();

  void reset() {
    for (int i = 0; i < k; ++i) {
      key[i] = -std::numeric_limits<float>::infinity();
      id[i] = kNoId;
    }
  }
  // a is worse than b
  static bool worse(float ka, int64_t ia, float kb, int64_t ib) {
    return ka < kb || (ka == kb && ia > ib);
  }
  float threshold() const { return key[0]; }
  // Push (kk, ii) if it beats the worst kept entry.
  inline void push(float kk, int64_t ii) {
    if (!worse(key[0], id[0], kk, ii)) return;
    int i = 0;
    for (;;) {
      int l = 2 * i + 1;
      if (l >= k) break;
      int r = l + 1;
      int c = (r < k && worse(key[r], id[r], key[l], id[l])) ? r : l;
      if (!worse(key[c], id[c], kk, ii)) break;
      key[i] = key[c];
      id[i] = id[c];
      i = c;
    }
    key[i] = kk;
    id[i] = ii;
  }
  void merge_from(const TopK& o) {
    for (int i = 0; i < o.k; ++i)
      if (o.id[i] != kNoId) push(o.key[i], o.id[i]);
  }
  // Sort best first into (keys, ids); sentinel entries keep id kNoId.
  void sorted(std::vector<std::pair<float, int64_t>>& out) const {
    out.clear();
    for (int i = 0; i < k; ++i) out.emplace_back(key[i], id[i]);
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
      return worse(b.first, b.second, a.first, a.second);
    });
  }
};

// Owning storage for nq heaps of size k.
struct TopKSet {
  int k = 0;
  std::vector<float> keys;
  std::vector<int64_t> ids;
  std::vector<TopK> heaps;
  TopKSet(int64_t nq, int k_) : k(k_), keys(nq * k_), ids(nq * k_), heaps(nq) {
    for (int64_t q = 0; q < nq; ++q) {
      heaps[q].k = k;
      heaps[q].key = keys.data() + q * k;
      heaps[q].id = ids.data() + q * k;
      heaps[q].reset();
    }
  }
};

}  // namespace bebr
