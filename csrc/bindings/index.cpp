// Bindings of SdcIndex (private class _C.SdcIndex behind bebr.Index / bebr.HammingIndex).
// Inputs are checked and outputs allocated (pre-filled with id -1 and the pad score) while
// holding the GIL; the compute runs with the GIL released and touches no Python object.
#include <pybind11/stl.h>

#include <cerrno>
#include <cstdlib>
#include <optional>
#include <system_error>

#include "common.h"
#include "index.h"

namespace bebr {
namespace {

// Keeps an external (e.g. numpy.memmap) code buffer alive while the index reads it in place.
struct PyIndex : SdcIndex {
  using SdcIndex::SdcIndex;
  py::object keepalive;
};

Metric parse_metric(const std::string& s) {
  if (s == "ip") return Metric::kIP;
  if (s == "cosine") return Metric::kCosine;
  if (s == "hamming") return Metric::kHamming;
  throw py::value_error("metric must be 'ip', 'cosine' or 'hamming', got '" + s + "'");
}

const char* metric_name(Metric m) {
  return m == Metric::kIP ? "ip" : m == Metric::kCosine ? "cosine" : "hamming";
}

}  // namespace

void register_index(py::module_& m) {
  // BEBR_MIN_PARALLEL_WORK=N at import: the search work (block-queries) per thread started
  const char* env = std::getenv("BEBR_MIN_PARALLEL_WORK");
  if (env && *env) {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(env, &end, 10);
    if (errno || *end || v < 1)
      throw py::value_error(std::string("BEBR_MIN_PARALLEL_WORK must be an integer >= 1, got '") + env + "'");
    set_min_parallel_work(v);
  }
  m.def("min_parallel_work", &min_parallel_work,
        "Block-queries of search work per thread started (default 4096; env BEBR_MIN_PARALLEL_WORK).");
  m.def("set_min_parallel_work", &set_min_parallel_work, py::arg("work"),
        "Set the block-queries of search work per thread started (>= 1).");
  m.def(
      "last_search_stats",
      [] {
        const SearchStats st = last_search_stats();
        py::dict d;
        d["workers"] = st.workers;
        d["active_workers"] = st.active_workers;
        d["items"] = st.items;
        d["split"] = std::string(st.split);
        return d;
      },
      "How the calling thread's last search ran: {workers, active_workers, items, split}.");
  m.attr("MAX_ID") = kMaxId;
  py::class_<PyIndex>(m, "SdcIndex", "Blocked multi-bit code store with SIMD SDC search (private).")
      .def(py::init([](int dim, int bits, const std::string& metric) {
             return std::make_unique<PyIndex>(dim, bits, parse_metric(metric));
           }),
           py::arg("dim"), py::arg("bits"), py::arg("metric") = "ip")
      .def_property_readonly("dim", [](const PyIndex& s) { return s.geometry().dim; })
      .def_property_readonly("bits", [](const PyIndex& s) { return s.geometry().bits; })
      .def_property_readonly("code_bytes", [](const PyIndex& s) { return s.geometry().code_bytes; })
      .def_property_readonly("metric", [](const PyIndex& s) { return std::string(metric_name(s.metric())); })
      .def_property_readonly("next_id", &PyIndex::next_id)
      .def_property_readonly("codes_external", &PyIndex::codes_external)
      .def("__len__", &PyIndex::size)
      .def(
          "add",
          [](PyIndex& s, const py::array& codes, std::optional<py::array> ids, int32_t version) {
            auto c = checked_array<uint8_t>(codes, "codes", 2, s.geometry().code_bytes);
            std::optional<py::array_t<int64_t>> i;
            if (ids) i = checked_ids(*ids, "ids", c.shape(0));
            const uint8_t* cp = c.data();
            const int64_t* ip = i ? i->data() : nullptr;
            const int64_t n = c.shape(0);
            int64_t first;
            {
              py::gil_scoped_release nogil;
              first = s.add(cp, n, ip, version);
            }
            if (i) return py::array(*i);
            py::array_t<int64_t> out(static_cast<py::ssize_t>(n));
            int64_t* op = out.mutable_data();
            for (int64_t j = 0; j < n; ++j) op[j] = first + j;
            return py::array(out);
          },
          py::arg("codes"), py::arg("ids") = py::none(), py::arg("version") = 0,
          "Add codes; without ids they get next_id.. under the index's lock. Returns the ids.")
      .def(
          "upsert",
          [](PyIndex& s, const py::array& codes, const py::array& ids, int32_t version) {
            auto c = checked_array<uint8_t>(codes, "codes", 2, s.geometry().code_bytes);
            auto i = checked_ids(ids, "ids", c.shape(0));
            py::gil_scoped_release nogil;
            s.upsert(c.data(), c.shape(0), i.data(), version);
          },
          py::arg("codes"), py::arg("ids"), py::arg("version") = 0)
      .def(
          "remove",
          [](PyIndex& s, const py::array& ids) {
            auto i = checked_ids(ids, "ids", -1);
            py::gil_scoped_release nogil;
            s.remove(i.data(), i.shape(0));
          },
          py::arg("ids"))
      .def("compact", [](PyIndex& s) {
        py::gil_scoped_release nogil;
        s.compact();
      })
      .def(
          "search",
          [](const PyIndex& s, const py::array& queries, int k, int threads, std::optional<py::array> allow_ids,
             std::optional<py::array> allow_mask, std::optional<py::array> exclude_ids,
             std::optional<py::array> exclude_mask, int query_bits, const std::vector<int32_t>& vversions,
             const std::vector<py::array>& vcodes, const std::vector<float>& vscale,
             const std::vector<float>& vshift, float prune) {
            if (query_bits < 1 || query_bits > 7)
              throw py::value_error("query_bits must be in [1, 7], got " + std::to_string(query_bits));
            if (s.metric() == Metric::kHamming && query_bits != 1)
              throw py::value_error("a Hamming index takes 1-bit queries, got query_bits=" + std::to_string(query_bits));
            auto q = checked_array<uint8_t>(queries, "queries", 2, query_bits * s.geometry().plane_bytes);
            if (k <= 0) throw py::value_error("k must be >= 1, got " + std::to_string(k));
            if (threads <= 0) throw py::value_error("threads must be >= 1, got " + std::to_string(threads));
            const py::ssize_t nq = q.shape(0);
            SearchInputs in(allow_ids, allow_mask, exclude_ids, exclude_mask, nq, q.shape(1), vversions, vcodes,
                            vscale, vshift);
            py::array_t<float> scores({nq, static_cast<py::ssize_t>(k)});
            py::array_t<int64_t> ids({nq, static_cast<py::ssize_t>(k)});
            const float pad = s.metric() == Metric::kHamming ? std::numeric_limits<float>::infinity()
                                                             : -std::numeric_limits<float>::infinity();
            std::fill_n(scores.mutable_data(), nq * k, pad);
            std::fill_n(ids.mutable_data(), nq * k, int64_t(-1));
            float* sp = scores.mutable_data();
            int64_t* ip = ids.mutable_data();
            {
              py::gil_scoped_release nogil;
              s.search(q.data(), nq, k, threads, in.filter, sp, ip, query_bits, in.vq, prune);
            }
            return py::make_tuple(scores, ids);
          },
          py::arg("queries"), py::arg("k"), py::arg("threads") = 1, py::arg("allow_ids") = py::none(),
          py::arg("allow_mask") = py::none(), py::arg("exclude_ids") = py::none(),
          py::arg("exclude_mask") = py::none(), py::arg("query_bits"), py::arg("version_tags"),
          py::arg("version_codes"), py::arg("version_scale") = std::vector<float>{},
          py::arg("version_shift") = std::vector<float>{}, py::arg("prune") = 0.f)
      .def("versions", &PyIndex::versions)
      .def("ids_of_version", [](const PyIndex& s, int32_t v) { return to_array(s.ids_of_version(v)); })
      .def("ids", [](const PyIndex& s) { return to_array(s.ids()); })
      .def("__contains__", &PyIndex::contains)
      .def(
          "get_codes",
          [](const PyIndex& s, const py::array& ids) { return codes_of(s, ids); },
          py::arg("ids"), "Packed codes and versions of ids (ValueError if one is absent).")
      .def(
          "write_dense",
          [](PyIndex& s, int fd, int64_t data_start) {
            DenseFileInfo info;
            try {
              py::gil_scoped_release nogil;
              s.compact();
              info = s.write_dense(fd, data_start);
            } catch (const std::system_error& e) {
              errno = e.code().value();
              PyErr_SetFromErrno(PyExc_OSError);
              throw py::error_already_set();
            }
            py::list sections;
            for (const auto& e : info.sections) {
              py::dict d;
              d["name"] = e.name;
              d["dtype"] = e.dtype;
              d["count"] = e.count;
              d["offset"] = e.offset;
              d["nbytes"] = e.nbytes;
              d["sha256"] = e.sha256;
              sections.append(d);
            }
            py::dict out;
            out["n"] = info.n;
            out["next_id"] = info.next_id;
            out["sections"] = sections;
            out["data_nbytes"] = info.sections.empty() ? int64_t(0)
                                                        : (info.sections.back().offset +
                                                           (info.sections.back().nbytes + 63) / 64 * 64);
            return out;
          },
          py::arg("fd"), py::arg("data_start"),
          "Compact, then write the data area of an index file at byte data_start of the open file "
          "descriptor fd under the index's shared lock (concurrent changes wait); returns {n, next_id, "
          "sections: [{name, dtype, count, offset, nbytes, sha256}], data_nbytes}.")
      .def("memory_bytes", &PyIndex::memory_bytes,
           "Bytes of memory the index owns (excludes memory-mapped codes).")
      .def(
          "assign_dense",
          [](PyIndex& s, const py::array& codes, const py::array& ids, const py::array& versions,
             const py::array& invn, int64_t next_id, bool external) {
            auto c = checked_array<uint8_t>(codes, "codes", 1);
            auto i = checked_ids(ids, "ids", -1);
            auto v = checked_array<int32_t>(versions, "versions", 1);
            auto f = checked_array<float>(invn, "inverse norms", 1);
            const int64_t n = i.shape(0);
            const int64_t nb = (n + kBlock - 1) / kBlock;
            if (c.shape(0) != static_cast<py::ssize_t>(nb * s.geometry().block_bytes))
              throw py::value_error("codes must hold " + std::to_string(nb * s.geometry().block_bytes) + " bytes for " +
                                    std::to_string(n) + " items, got " + std::to_string(c.shape(0)));
            if (v.shape(0) != n) throw py::value_error("versions must have one entry per id");
            const int64_t want_invn = s.metric() == Metric::kCosine ? nb * kBlock : 0;
            if (f.shape(0) != want_invn)
              throw py::value_error("inverse norms must have " + std::to_string(want_invn) + " entries, got " +
                                    std::to_string(f.shape(0)));
            {
              py::gil_scoped_release nogil;
              s.assign(c.data(), external, n, i.data(), v.data(), f.data(), next_id);
            }
            s.keepalive = external ? py::object(codes) : py::object();
          },
          py::arg("codes"), py::arg("ids"), py::arg("versions"), py::arg("invn"), py::arg("next_id"),
          py::arg("external"),
          "Replace the content with dense arrays (from export_dense); external=True reads codes in place.");
}

}  // namespace bebr
