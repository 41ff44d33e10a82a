// HelperPool: a process-wide set of sleeping helper threads for search. Waking a sleeping
// thread is fast even on a loaded machine, whereas a newly created thread can wait a whole
// scheduler period before it first runs. Posting never blocks and a task is best-effort: the
// caller always works through its own items (see SdcIndex::search), so a helper that picks a
// task up late, or never (busy with another search, or after fork()), only costs speed.
// The pool is intentionally leaked (helpers detached): nothing to join at interpreter exit.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace bebr {

class HelperPool {
 public:
  using Task = std::function<void(int)>;  // called with helper index t in [1, nthreads)

  static HelperPool& instance() {
    static HelperPool* pool = new HelperPool();
    return *pool;
  }

  // Offer `task` to helpers 1..nthreads-1 (spawning helpers up to that count once).
  void post(std::shared_ptr<Task> task, int nthreads) {
    {
      std::lock_guard<std::mutex> g(mu_);
      while (spawned_ < nthreads - 1 && spawned_ < kMaxHelpers) {
        const int index = ++spawned_;
        std::thread([this, index] { loop(index); }).detach();
      }
      task_ = std::move(task);
      task_threads_ = nthreads;
      ++gen_;
    }
    cv_.notify_all();
  }

 private:
  static constexpr int kMaxHelpers = 255;

  void loop(int index) {
    uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Task> task;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return gen_ != seen; });
        seen = gen_;
        if (index < task_threads_) task = task_;
      }
      if (task) (*task)(index);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<Task> task_;
  int task_threads_ = 0;
  uint64_t gen_ = 0;
  int spawned_ = 0;
};

// Run fn(t, item) for item in [0, nitems) on up to T threads: the caller is thread 0 and
// works through items too, helpers of the HelperPool are 1..T-1 and take items as they wake
// (handed out dynamically, so a thread the OS schedules late delays nothing). After an
// item throws, the remaining items are only counted; the first exception is rethrown once
// every claimed item is done. Returns the number of threads that processed an item.
// (The work state is shared by shared_ptr: a helper that picks the task up only after every
// item is done finds none left and returns without touching this call's stack or fn.)
template <class Fn>
int parallel_items(int64_t nitems, int T, Fn&& fn) {
  if (nitems <= 0) return 0;
  if (T <= 1) {
    for (int64_t i = 0; i < nitems; ++i) fn(0, i);
    return 1;
  }
  struct Work {
    std::atomic<int64_t> next{0}, done{0};
    std::atomic<int> active{0};
    std::atomic<bool> failed{false};
    std::mutex mu;
    std::condition_variable cv;
    std::exception_ptr err;
  };
  auto work = std::make_shared<Work>();
  auto worker = [work, nitems, &fn](int t) {
    for (bool first = true;; first = false) {
      const int64_t item = work->next.fetch_add(1);
      if (item >= nitems) return;
      if (first) work->active.fetch_add(1);
      if (!work->failed.load()) {
        try {
          fn(t, item);
        } catch (...) {
          std::lock_guard<std::mutex> g(work->mu);
          if (!work->err) work->err = std::current_exception();
          work->failed.store(true);
        }
      }
      if (work->done.fetch_add(1) + 1 == nitems) {
        std::lock_guard<std::mutex> g(work->mu);
        work->cv.notify_all();
      }
    }
  };
  HelperPool::instance().post(std::make_shared<HelperPool::Task>(worker), T);
  worker(0);
  std::unique_lock<std::mutex> lk(work->mu);
  work->cv.wait(lk, [&] { return work->done.load() == nitems; });
  if (work->err) std::rethrow_exception(work->err);
  return work->active.load();
}

}  // namespace bebr
