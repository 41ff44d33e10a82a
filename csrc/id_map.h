// IdMap: id -> slot lookup of SdcIndex. An open-addressing hash table (linear probing) that
// stores only slot numbers, 8 bytes per entry at a load of at most 0.7; the key of an entry is
// read from the index's slot -> id array, which every call receives. About 12-23 bytes per item
// instead of the ~40-50 of std::unordered_map<int64_t, int64_t> (a node per item).
// Ids are >= 0 (SdcIndex checks); the caller keeps ids[slot] == id for every stored entry.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace bebr {

class IdMap {
 public:
  size_t size() const { return live_; }
  size_t memory_bytes() const { return t_.capacity() * sizeof(int64_t); }

  void clear() {
    t_.clear();
    t_.shrink_to_fit();
    used_ = live_ = 0;
  }

  // Slot of `id`, or -1.
  int64_t find(int64_t id, const int64_t* ids) const {
    if (t_.empty()) return -1;
    for (size_t e = hash(id) & mask(); ; e = (e + 1) & mask()) {
      const int64_t s = t_[e];
      if (s == kEmpty) return -1;
      if (s >= 0 && ids[s] == id) return s;
    }
  }
  bool contains(int64_t id, const int64_t* ids) const { return find(id, ids) >= 0; }

  // Make room for `extra` more inserts without rehashing in between.
  void reserve(size_t extra, const int64_t* ids) {
    if (static_cast<double>(used_ + extra) > kMaxLoad * static_cast<double>(t_.size())) rehash(live_ + extra, ids);
  }

  // Insert id -> slot (ids[slot] == id; id must not be present).
  void insert(int64_t id, int64_t slot, const int64_t* ids) {
    reserve(1, ids);
    size_t e = hash(id) & mask();
    while (t_[e] >= 0) e = (e + 1) & mask();
    if (t_[e] == kEmpty) ++used_;
    t_[e] = slot;
    ++live_;
  }

  // Remove id if present (true if it was).
  bool erase(int64_t id, const int64_t* ids) {
    if (t_.empty()) return false;
    for (size_t e = hash(id) & mask(); ; e = (e + 1) & mask()) {
      const int64_t s = t_[e];
      if (s == kEmpty) return false;
      if (s >= 0 && ids[s] == id) {
        t_[e] = kTomb;
        --live_;
        return true;
      }
    }
  }

 private:
  static constexpr int64_t kEmpty = -1, kTomb = -2;
  static constexpr double kMaxLoad = 0.7;

  static size_t hash(int64_t id) {  // splitmix64 finaliser
    uint64_t z = static_cast<uint64_t>(id) + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return static_cast<size_t>(z ^ (z >> 31));
  }
  size_t mask() const { return t_.size() - 1; }

  // Rebuild with room for `want` live entries (drops tombstones).
  void rehash(size_t want, const int64_t* ids) {
    size_t cap = 16;
    while (static_cast<double>(want) > kMaxLoad * static_cast<double>(cap)) cap *= 2;
    std::vector<int64_t> old;
    old.swap(t_);
    t_.assign(cap, kEmpty);
    used_ = live_ = 0;
    for (const int64_t s : old)
      if (s >= 0) {
        size_t e = hash(ids[s]) & mask();
        while (t_[e] != kEmpty) e = (e + 1) & mask();
        t_[e] = s;
        ++used_;
        ++live_;
      }
  }

  std::vector<int64_t> t_;  // slot, kEmpty or kTomb
  size_t used_ = 0;         // entries not empty (live + tombstones)
  size_t live_ = 0;
};

}  // namespace bebr
