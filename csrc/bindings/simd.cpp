// Bindings of SIMD dispatch and the memory-bandwidth probe.
#include <chrono>
#include <thread>
#include <vector>

#include "common.h"
#include "dispatch.h"

namespace bebr {

void register_simd(py::module_& m) {
  // Choose the level now (import time): a bad BEBR_SIMD fails the import with its message.
  (void)active_kernels();
  m.def("simd_level", &simd_level_name, "Name of the active SIMD level.");
  // searches of at least this many queries use a level's batch kernel (AMX) where it has one
  m.attr("BATCH_MIN_QUERIES") = kBatchMinQueries;
  m.attr("BATCH_MIN_BITS") = kBatchMinBits;
  m.def("simd_levels", &available_simd_levels, "SIMD levels available on this CPU, lowest first.");
  m.def("set_simd_level", &set_simd_level, py::arg("level"),
        "Switch the active SIMD level (ValueError if unavailable).");
  m.def(
      "read_bandwidth",
      [](const py::array& buf, int threads, int repeats) {
        auto a = checked_array<uint8_t>(buf, "buffer", 1);
        if (threads < 1) throw py::value_error("threads must be >= 1");
        if (repeats < 1) throw py::value_error("repeats must be >= 1");
        const uint8_t* p = a.data();
        const size_t n = static_cast<size_t>(a.size());
        std::vector<double> secs;
        uint64_t sink = 0;
        {
          py::gil_scoped_release nogil;
          const KernelTable& kt = active_kernels();
          for (int r = 0; r < repeats; ++r) {
            std::vector<uint64_t> part(threads, 0);
            auto t0 = std::chrono::steady_clock::now();
            std::vector<std::thread> ws;
            for (int t = 0; t < threads; ++t) {
              const size_t b = n * t / threads / 64 * 64, e = t + 1 == threads ? n : n * (t + 1) / threads / 64 * 64;
              ws.emplace_back([&, t, b, e] { part[t] = kt.read(p + b, e - b); });
            }
            for (auto& w : ws) w.join();
            secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
            for (auto v : part) sink += v;
          }
        }
        return py::make_tuple(secs, sink);
      },
      py::arg("buffer"), py::arg("threads") = 1, py::arg("repeats") = 3,
      "Stream-read a uint8 buffer with the active level's read kernel: (seconds per repeat, checksum).");
}

}  // namespace bebr
