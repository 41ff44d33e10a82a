// CodeBuffer: owned, zero-initialised byte storage for blocked codes. Allocations of 4 MiB and
// more are 2 MiB aligned and advised as transparent huge pages (fewer TLB misses while a scan
// streams the whole buffer); growth reallocates geometrically and copies.
#pragma once
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace bebr {

class CodeBuffer {
 public:
  CodeBuffer() = default;
  CodeBuffer(const CodeBuffer&) = delete;
  CodeBuffer& operator=(const CodeBuffer&) = delete;
  ~CodeBuffer() { std::free(p_); }

  uint8_t* data() { return p_; }
  const uint8_t* data() const { return p_; }
  size_t size() const { return size_; }
  size_t capacity() const { return cap_; }

  void swap(CodeBuffer& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(size_, o.size_);
    std::swap(cap_, o.cap_);
  }
  void reserve(size_t n) {
    if (n <= cap_) return;
    const size_t big = size_t(4) << 20;
    const size_t align = n >= big ? size_t(2) << 20 : 64;
    const size_t bytes = (n + align - 1) / align * align;
    auto* q = static_cast<uint8_t*>(std::aligned_alloc(align, bytes));
    if (!q) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (align > 64) madvise(q, bytes, MADV_HUGEPAGE);
#endif
    if (size_) std::memcpy(q, p_, size_);
    std::free(p_);
    p_ = q;
    cap_ = bytes;
  }
  // Grow (new bytes zero) or shrink the logical size; growth is geometric.
  void resize(size_t n) {
    if (n > cap_) reserve(std::max(n, cap_ + cap_ / 2));
    if (n > size_) std::memset(p_ + size_, 0, n - size_);
    size_ = n;
  }
  void assign(const uint8_t* src, size_t n) {
    release();
    reserve(n);
    if (n) std::memcpy(p_, src, n);
    size_ = n;
  }
  void release() {
    std::free(p_);
    p_ = nullptr;
    size_ = cap_ = 0;
  }

 private:
  uint8_t* p_ = nullptr;
  size_t size_ = 0, cap_ = 0;
};

}  // namespace bebr
