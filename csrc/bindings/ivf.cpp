// Bindings of IvfIndex (private class _C.IvfIndex behind bebr.IVFIndex). Inputs are checked
// and outputs allocated (pre-filled with id -1 / -inf) while holding the GIL; the compute runs
// with the GIL released and touches no Python object.
#include <pybind11/stl.h>

#include <optional>

#include "common.h"
#include "ivf.h"

namespace bebr {
namespace {

// Keeps an external (numpy.memmap) code buffer alive while the lists read it in place.
struct PyIvf : IvfIndex {
  using IvfIndex::IvfIndex;
  py::object keepalive;
};

// The checks and outputs both re-rank bindings share: queries of shape (candidates' rows, d),
// k >= 1, and the (rows, k) score and id arrays the kernels fill.
struct RerankOutputs {
  py::array_t<float> scores;
  py::array_t<int64_t> ids;
};

RerankOutputs rerank_outputs(const py::array_t<int64_t>& c, const py::array_t<float>& q, py::ssize_t d, int k) {
  if (q.shape(0) != c.shape(0) || q.shape(1) != d)
    throw py::value_error("refine.queries must have shape (" + std::to_string(c.shape(0)) + ", " +
                          std::to_string(d) + "), got " + shape_str(q));
  if (k <= 0) throw py::value_error("k must be >= 1, got " + std::to_string(k));
  return {py::array_t<float>({c.shape(0), static_cast<py::ssize_t>(k)}),
          py::array_t<int64_t>({c.shape(0), static_cast<py::ssize_t>(k)})};
}

}  // namespace

void register_ivf(py::module_& m) {
  py::class_<PyIvf>(m, "IvfIndex", "Inverted lists of blocked codes with probed SIMD SDC search (private).")
      .def(py::init([](int dim, int bits, const std::string& metric, int nlist, float spill_lambda) {
             if (metric != "ip" && metric != "cosine")
               throw py::value_error("metric must be 'ip' or 'cosine', got '" + metric + "'");
             return std::make_unique<PyIvf>(dim, bits, metric == "ip" ? Metric::kIP : Metric::kCosine, nlist,
                                            spill_lambda);
           }),
           py::arg("dim"), py::arg("bits"), py::arg("metric"), py::arg("nlist"), py::arg("spill_lambda") = -1.f)
      .def_property_readonly("spill_lambda", &PyIvf::spill_lambda)
      .def_property_readonly("dim", [](const PyIvf& s) { return s.geometry().dim; })
      .def_property_readonly("bits", [](const PyIvf& s) { return s.geometry().bits; })
      .def_property_readonly("nlist", &PyIvf::nlist)
      .def_property_readonly("next_id", &PyIvf::next_id)
      .def_property_readonly("is_trained", &PyIvf::trained)
      .def_property_readonly("codes_external", &PyIvf::codes_external)
      .def("__len__", &PyIvf::size)
      .def("__contains__", &PyIvf::contains)
      .def(
          "set_centroids",
          [](PyIvf& s, const py::array& c) {
            auto a = checked_array<float>(c, "centroids", 2, s.geometry().dim);
            if (a.shape(0) != s.nlist())
              throw py::value_error("centroids must have shape (" + std::to_string(s.nlist()) + ", " +
                                    std::to_string(s.geometry().dim) + "), got " + shape_str(a));
            py::gil_scoped_release nogil;
            s.set_centroids(a.data());
          },
          py::arg("centroids"))
      .def("centroids",
           [](const PyIvf& s) {
             const auto c = s.centroids();
             py::array_t<float> out({static_cast<py::ssize_t>(c.empty() ? 0 : s.nlist()),
                                     static_cast<py::ssize_t>(s.geometry().dim)});
             std::copy(c.begin(), c.end(), out.mutable_data());
             return out;
           })
      .def(
          "assign_lists",
          [](const PyIvf& s, const py::array& codes) {
            auto c = checked_array<uint8_t>(codes, "codes", 2, s.geometry().code_bytes);
            py::array_t<int32_t> out(c.shape(0));
            int32_t* op = out.mutable_data();
            py::gil_scoped_release nogil;
            s.assign_lists(c.data(), c.shape(0), op);
            return out;
          },
          py::arg("codes"))
      .def(
          "add",
          [](PyIvf& s, const py::array& codes, std::optional<py::array> ids, int32_t version) {
            auto c = checked_array<uint8_t>(codes, "codes", 2, s.geometry().code_bytes);
            std::optional<py::array_t<int64_t>> i;
            if (ids) i = checked_ids(*ids, "ids", c.shape(0));
            const int64_t* ip = i ? i->data() : nullptr;
            py::gil_scoped_release nogil;
            s.add(c.data(), c.shape(0), ip, version);
          },
          py::arg("codes"), py::arg("ids") = py::none(), py::arg("version") = 0)
      .def(
          "upsert",
          [](PyIvf& s, const py::array& codes, const py::array& ids, int32_t version) {
            auto c = checked_array<uint8_t>(codes, "codes", 2, s.geometry().code_bytes);
            auto i = checked_ids(ids, "ids", c.shape(0));
            py::gil_scoped_release nogil;
            s.upsert(c.data(), c.shape(0), i.data(), version);
          },
          py::arg("codes"), py::arg("ids"), py::arg("version") = 0)
      .def(
          "remove",
          [](PyIvf& s, const py::array& ids) {
            auto i = checked_ids(ids, "ids", -1);
            py::gil_scoped_release nogil;
            s.remove(i.data(), i.shape(0));
          },
          py::arg("ids"))
      .def("compact",
           [](PyIvf& s) {
             py::gil_scoped_release nogil;
             s.compact();
           })
      .def(
          "probe",
          [](const PyIvf& s, const py::array& queries, int nprobe, int query_bits) {
            if (query_bits < 1 || query_bits > 7)
              throw py::value_error("query_bits must be in [1, 7], got " + std::to_string(query_bits));
            auto q = checked_array<uint8_t>(queries, "queries", 2, query_bits * s.geometry().plane_bytes);
            if (nprobe <= 0) throw py::value_error("nprobe must be >= 1, got " + std::to_string(nprobe));
            const int np = std::min(nprobe, s.nlist());
            py::array_t<int32_t> out({q.shape(0), static_cast<py::ssize_t>(np)});
            int32_t* op = out.mutable_data();
            py::gil_scoped_release nogil;
            s.probe(q.data(), q.shape(0), np, query_bits, op);
            return out;
          },
          py::arg("queries"), py::arg("nprobe"), py::arg("query_bits"))
      .def(
          "search",
          [](const PyIvf& s, const py::array& queries, int k, int threads, std::optional<py::array> allow_ids,
             std::optional<py::array> allow_mask, std::optional<py::array> exclude_ids,
             std::optional<py::array> exclude_mask, int query_bits, const std::vector<int32_t>& vversions,
             const std::vector<py::array>& vcodes, const std::vector<float>& vscale,
             const std::vector<float>& vshift, int nprobe) {
            if (query_bits < 1 || query_bits > 7)
              throw py::value_error("query_bits must be in [1, 7], got " + std::to_string(query_bits));
            auto q = checked_array<uint8_t>(queries, "queries", 2, query_bits * s.geometry().plane_bytes);
            if (k <= 0) throw py::value_error("k must be >= 1, got " + std::to_string(k));
            if (nprobe <= 0) throw py::value_error("nprobe must be >= 1, got " + std::to_string(nprobe));
            if (threads <= 0) throw py::value_error("threads must be >= 1, got " + std::to_string(threads));
            const py::ssize_t nq = q.shape(0);
            SearchInputs in(allow_ids, allow_mask, exclude_ids, exclude_mask, nq, q.shape(1), vversions, vcodes,
                            vscale, vshift);
            py::array_t<float> scores({nq, static_cast<py::ssize_t>(k)});
            py::array_t<int64_t> ids({nq, static_cast<py::ssize_t>(k)});
            std::fill_n(scores.mutable_data(), nq * k, -std::numeric_limits<float>::infinity());
            std::fill_n(ids.mutable_data(), nq * k, int64_t(-1));
            float* sp = scores.mutable_data();
            int64_t* ip = ids.mutable_data();
            {
              py::gil_scoped_release nogil;
              s.search(q.data(), nq, k, nprobe, threads, in.filter, sp, ip, query_bits, in.vq);
            }
            return py::make_tuple(scores, ids);
          },
          py::arg("queries"), py::arg("k"), py::arg("threads"), py::arg("allow_ids"), py::arg("allow_mask"),
          py::arg("exclude_ids"), py::arg("exclude_mask"), py::arg("query_bits"), py::arg("version_tags"),
          py::arg("version_codes"), py::arg("version_scale"), py::arg("version_shift"), py::arg("nprobe"))
      .def(
          "search_sq8",
          // The single-query fast path of IVFIndex.search (no filter, no version queries):
          // the search for k * factor candidates and their SQ8 re-ranking in one call, the
          // candidates kept in C++.
          [](const PyIvf& s, const py::array& queries, int k, int nprobe, int threads, int query_bits, int factor,
             const py::array& rows, const py::array& lo, const py::array& step, const py::array& fqueries) {
            if (query_bits < 1 || query_bits > 7)
              throw py::value_error("query_bits must be in [1, 7], got " + std::to_string(query_bits));
            auto q = checked_array<uint8_t>(queries, "queries", 2, query_bits * s.geometry().plane_bytes);
            if (k <= 0) throw py::value_error("k must be >= 1, got " + std::to_string(k));
            if (factor <= 0) throw py::value_error("refine.factor must be >= 1, got " + std::to_string(factor));
            if (static_cast<int64_t>(k) * factor > std::numeric_limits<int>::max() / 2)
              throw py::value_error("k * refine.factor is too large");
            const Sq8Data sq8(rows, lo, step);
            const py::ssize_t d = sq8.dim;
            auto fq = checked_array<float>(fqueries, "refine.queries", 2);
            const py::ssize_t nq = q.shape(0);
            if (fq.shape(0) != nq || fq.shape(1) != d)
              throw py::value_error("refine.queries must have shape (" + std::to_string(nq) + ", " +
                                    std::to_string(d) + "), got " + shape_str(fq));
            const int kc = k * factor;
            py::array_t<float> scores({nq, static_cast<py::ssize_t>(k)});
            py::array_t<int64_t> ids({nq, static_cast<py::ssize_t>(k)});
            float* sp = scores.mutable_data();
            int64_t* ip = ids.mutable_data();
            {
              py::gil_scoped_release nogil;
              std::vector<float> cs(static_cast<size_t>(nq) * kc);
              std::vector<int64_t> ci(static_cast<size_t>(nq) * kc);
              s.search(q.data(), nq, kc, nprobe, threads, FilterSpec{}, cs.data(), ci.data(), query_bits);
              rerank_sq8(ci.data(), nq, kc, sq8.rows.data(), sq8.rows.shape(0), static_cast<int>(d), sq8.lo.data(),
                         sq8.step.data(), fq.data(), s.metric() == Metric::kCosine, k, threads, sp, ip);
            }
            return py::make_tuple(scores, ids);
          })
      .def("versions", &PyIvf::versions)
      .def("ids_of_version", [](const PyIvf& s, int32_t v) { return to_array(s.ids_of_version(v)); })
      .def("ids", [](const PyIvf& s) { return to_array(s.ids()); })
      .def("list_sizes", [](const PyIvf& s) { return to_array(s.list_sizes()); })
      .def("memory_bytes", &PyIvf::memory_bytes)
      .def("memory_breakdown", &PyIvf::memory_breakdown)
      .def_property_readonly("id_table_built", &PyIvf::id_table_built)
      .def(
          "get_codes",
          [](const PyIvf& s, const py::array& ids) { return codes_of(s, ids); },
          py::arg("ids"), "Packed codes and versions of ids (ValueError if one is absent).")
      .def(
          "export_dense",
          [](PyIvf& s) {
            std::vector<uint8_t> codes;
            std::vector<int64_t> ids, sizes, spilled;
            std::vector<int32_t> vers;
            std::vector<float> invn;
            int64_t next_id;
            {
              py::gil_scoped_release nogil;
              s.export_dense(codes, ids, vers, invn, sizes, spilled);
              next_id = s.next_id();
            }
            return py::make_tuple(to_array(codes), to_array(ids), to_array(vers), to_array(invn),
                                  to_array(sizes), next_id, to_array(spilled));
          },
          "Compact every list, then return (blocked codes, ids, versions, inverse norms, list sizes, next_id, "
          "spilled copies per list), lists concatenated in list order.")
      .def(
          "assign_dense",
          [](PyIvf& s, const py::array& codes, const py::array& ids, const py::array& versions, const py::array& invn,
             const py::array& sizes, int64_t next_id, bool external, std::optional<py::array> spilled_sizes) {
            auto c = checked_array<uint8_t>(codes, "codes", 1);
            auto i = checked_ids(ids, "ids", -1);
            auto v = checked_array<int32_t>(versions, "versions", 1);
            auto f = checked_array<float>(invn, "inverse norms", 1);
            auto z = checked_array<int64_t>(sizes, "list sizes", 1);
            if (z.shape(0) != s.nlist())
              throw py::value_error("list sizes must have " + std::to_string(s.nlist()) + " entries, got " +
                                    std::to_string(z.shape(0)));
            std::optional<py::array_t<int64_t>> sp;
            if (spilled_sizes) {
              sp = checked_array<int64_t>(*spilled_sizes, "spilled copies per list", 1);
              if (sp->shape(0) != s.nlist())
                throw py::value_error("spilled copies per list must have " + std::to_string(s.nlist()) + " entries");
            }
            const int64_t* spp = sp ? sp->data() : nullptr;
            int64_t n = 0, nb = 0;
            for (int l = 0; l < s.nlist(); ++l) {
              if (z.data()[l] < 0) throw py::value_error("list sizes must be >= 0");
              n += z.data()[l];
              nb += (z.data()[l] + kBlock - 1) / kBlock;
            }
            const auto& geo = s.geometry();
            if (i.shape(0) != n || v.shape(0) != n)
              throw py::value_error("ids and versions must have " + std::to_string(n) + " entries (the list sizes' sum)");
            if (c.shape(0) != static_cast<py::ssize_t>(nb * geo.block_bytes))
              throw py::value_error("codes must hold " + std::to_string(nb * geo.block_bytes) + " bytes, got " +
                                    std::to_string(c.shape(0)));
            const int64_t want_invn = s.metric() == Metric::kCosine ? nb * kBlock : 0;
            if (f.shape(0) != want_invn)
              throw py::value_error("inverse norms must have " + std::to_string(want_invn) + " entries, got " +
                                    std::to_string(f.shape(0)));
            {
              py::gil_scoped_release nogil;
              s.assign_dense(c.data(), external, i.data(), v.data(), want_invn ? f.data() : nullptr, z.data(), spp,
                             next_id);
            }
            s.keepalive = external ? py::object(codes) : py::object();
          },
          py::arg("codes"), py::arg("ids"), py::arg("versions"), py::arg("invn"), py::arg("list_sizes"),
          py::arg("next_id"), py::arg("external"), py::arg("spilled_sizes") = py::none(),
          "Replace the content with dense arrays (from export_dense); external=True reads codes in place.");

  m.def(
      "rerank_sq8",
      [](const py::array& cand, const py::array& rows, const py::array& lo, const py::array& step,
         const py::array& queries, bool cosine, int k, int threads) {
        auto c = checked_array<int64_t>(cand, "candidates", 2);
        const Sq8Data sq8(rows, lo, step);
        const py::ssize_t d = sq8.dim;
        auto q = checked_array<float>(queries, "refine.queries", 2);
        RerankOutputs out = rerank_outputs(c, q, d, k);
        float* sp = out.scores.mutable_data();
        int64_t* ip = out.ids.mutable_data();
        {
          py::gil_scoped_release nogil;
          rerank_sq8(c.data(), c.shape(0), static_cast<int>(c.shape(1)), sq8.rows.data(), sq8.rows.shape(0),
                     static_cast<int>(d), sq8.lo.data(), sq8.step.data(), q.data(), cosine, k, threads, sp, ip);
        }
        return py::make_tuple(out.scores, out.ids);
      },
      py::arg("candidates"), py::arg("rows"), py::arg("lo"), py::arg("step"), py::arg("queries"), py::arg("cosine"),
      py::arg("k"), py::arg("threads"),
      "Best k of each query's candidate ids by the float inner product (cosine) of the queries with SQ8 rows.");
  m.def(
      "rerank_float",
      [](const py::array& cand, const py::array& rows, const py::array& queries, bool cosine, int k, int threads) {
        auto c = checked_array<int64_t>(cand, "candidates", 2);
        auto r = checked_array<float>(rows, "refine.vectors", 2);
        const py::ssize_t d = r.shape(1);
        auto q = checked_array<float>(queries, "refine.queries", 2);
        RerankOutputs out = rerank_outputs(c, q, d, k);
        float* sp = out.scores.mutable_data();
        int64_t* ip = out.ids.mutable_data();
        {
          py::gil_scoped_release nogil;
          rerank_float(c.data(), c.shape(0), static_cast<int>(c.shape(1)), r.data(), r.shape(0), static_cast<int>(d),
                       q.data(), cosine, k, threads, sp, ip);
        }
        return py::make_tuple(out.scores, out.ids);
      },
      py::arg("candidates"), py::arg("rows"), py::arg("queries"), py::arg("cosine"), py::arg("k"), py::arg("threads"),
      "Best k of each query's candidate ids by the float inner product (cosine) of the queries with float rows.");
}

}  // namespace bebr
