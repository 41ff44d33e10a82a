// Bindings of the float64 inference core (private class _C.InferModel behind bebr.Encoder, and
// the free functions quantize_angle / pack_levels behind bebr.CodeSpec). Weights are copied
// into the C++ model once; inputs are checked and outputs allocated while holding the GIL,
// the compute runs with the GIL released.
#include <cstring>
#include <memory>
#include <string>

#include "common.h"
#include "infer.h"

namespace bebr {
namespace {

std::vector<float> vec_of(const py::array& a, const std::string& name, py::ssize_t rows, py::ssize_t cols) {
  const int ndim = cols < 0 ? 1 : 2;
  auto c = checked_array<float>(a, name.c_str(), ndim, cols);
  if (c.shape(0) != rows)
    throw py::value_error(name + " must have " + std::to_string(rows) + " rows, got shape " + shape_str(c));
  return std::vector<float>(c.data(), c.data() + c.size());
}

// An MLP given as (skip (c, a), [block, ...]), block = (w1, b1, mean, var, weight, bias, w2, b2, eps).
infer::Mlp mlp_of(const py::tuple& t, py::ssize_t a, py::ssize_t c, const std::string& name) {
  if (t.size() != 2) throw py::value_error(name + " must be a (skip, blocks) pair");
  infer::Mlp m;
  m.a = a;
  m.c = c;
  m.skip = vec_of(t[0].cast<py::array>(), name + ".skip", c, a);
  const py::list blocks = t[1].cast<py::list>();
  for (size_t i = 0; i < blocks.size(); ++i) {
    const py::tuple b = blocks[i].cast<py::tuple>();
    const std::string w = name + ".blocks." + std::to_string(i);
    if (b.size() != 9) throw py::value_error(w + " must have 9 entries");
    infer::Block blk;
    blk.a = i == 0 ? a : c;
    blk.c = c;
    const py::array w1 = b[0].cast<py::array>();
    if (w1.ndim() != 2) throw py::value_error(w + ".fc1.weight must be 2-d");
    blk.h = w1.shape(0);
    blk.w1 = vec_of(w1, w + ".fc1.weight", blk.h, blk.a);
    blk.b1 = vec_of(b[1].cast<py::array>(), w + ".fc1.bias", blk.h, -1);
    blk.bn_mean = vec_of(b[2].cast<py::array>(), w + ".bn.running_mean", blk.h, -1);
    blk.bn_var = vec_of(b[3].cast<py::array>(), w + ".bn.running_var", blk.h, -1);
    blk.bn_w = vec_of(b[4].cast<py::array>(), w + ".bn.weight", blk.h, -1);
    blk.bn_b = vec_of(b[5].cast<py::array>(), w + ".bn.bias", blk.h, -1);
    blk.w2 = vec_of(b[6].cast<py::array>(), w + ".fc2.weight", c, blk.h);
    blk.b2 = vec_of(b[7].cast<py::array>(), w + ".fc2.bias", c, -1);
    blk.eps = b[8].cast<double>();
    m.blocks.push_back(std::move(blk));
  }
  return m;
}

int check_threads(int threads) {
  if (threads < 1) throw py::value_error("threads must be >= 1, got " + std::to_string(threads));
  return threads;
}

}  // namespace

void register_infer(py::module_& m) {
  py::class_<infer::Model, std::shared_ptr<infer::Model>>(m, "InferModel",
                                                         "Float64 Binarizer inference (private; bebr.Encoder).")
      .def(py::init([](int64_t in_dim, int64_t dim, int bits, const py::array& in_mean, const py::tuple& W,
                       const py::list& B, const py::list& R, const py::list& heads) {
             auto md = std::make_shared<infer::Model>();
             md->in_dim = in_dim;
             md->dim = dim;
             md->bits = bits;
             if (in_dim < 1 || dim < 1 || bits < 1 || bits > 4)
               throw py::value_error("need in_dim >= 1, dim >= 1 and bits in [1, 4]");
             md->in_mean = vec_of(in_mean, "in_mean", in_dim, -1);
             md->W = mlp_of(W, in_dim, dim, "W");
             for (size_t t = 0; t < B.size(); ++t)
               md->B.push_back(mlp_of(B[t].cast<py::tuple>(), dim, in_dim, "B." + std::to_string(t)));
             for (size_t t = 0; t < R.size(); ++t)
               md->R.push_back(mlp_of(R[t].cast<py::tuple>(), in_dim, dim, "R." + std::to_string(t)));
             for (size_t i = 0; i < heads.size(); ++i) {
               const py::tuple h = heads[i].cast<py::tuple>();
               const std::string name = "cross." + std::to_string(i);
               if (h.size() != 2) throw py::value_error(name + " must be a (mean, nets) pair");
               infer::Head hd;
               hd.mean = vec_of(h[0].cast<py::array>(), name + ".mean", in_dim, -1);
               const py::list nets = h[1].cast<py::list>();
               for (size_t k = 0; k < nets.size(); ++k)
                 hd.nets.push_back(mlp_of(nets[k].cast<py::tuple>(), in_dim, dim, name + ".nets." + std::to_string(k)));
               md->heads.push_back(std::move(hd));
             }
             md->prepare();
             return md;
           }),
           py::arg("in_dim"), py::arg("dim"), py::arg("bits"), py::arg("in_mean"), py::arg("W"), py::arg("B"),
           py::arg("R"), py::arg("heads"))
      .def_readonly("in_dim", &infer::Model::in_dim)
      .def_readonly("dim", &infer::Model::dim)
      .def_readonly("bits", &infer::Model::bits)
      .def_property_readonly("n_heads", [](const infer::Model& md) { return md.heads.size(); })
      .def(
          "encode_levels",
          [](const infer::Model& md, const py::array& x, int threads, double margin) {
            auto a = checked_array<float>(x, "x", 2, md.in_dim);
            check_threads(threads);
            if (!(margin >= 0 && margin < 1)) throw py::value_error("margin must be in [0, 1)");
            const int64_t n = a.shape(0);
            py::array_t<uint8_t> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(md.dim)});
            const float* xp = a.data();
            uint8_t* op = out.mutable_data();
            {
              py::gil_scoped_release nogil;
              infer::encode_levels(md, xp, n, op, threads, margin);
            }
            return out;
          },
          py::arg("x"), py::arg("threads") = 1, py::arg("margin") = 0.0,
          "Levels (n, dim) uint8 of float32 rows x (n, in_dim) (margin > 0: float32 pass first).")
      .def(
          "encode_codes",
          [](const infer::Model& md, const py::array& x, int threads, double margin) {
            auto a = checked_array<float>(x, "x", 2, md.in_dim);
            check_threads(threads);
            if (!(margin >= 0 && margin < 1)) throw py::value_error("margin must be in [0, 1)");
            const int64_t n = a.shape(0), cb = md.bits * ((md.dim + 7) / 8);
            py::array_t<uint8_t> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(cb)});
            const float* xp = a.data();
            uint8_t* op = out.mutable_data();
            {
              py::gil_scoped_release nogil;
              infer::encode_codes(md, xp, n, op, threads, margin);
            }
            return out;
          },
          py::arg("x"), py::arg("threads") = 1, py::arg("margin") = 0.0,
          "Packed codes (n, bits * ceil(dim / 8)) of float32 rows x (encode_levels, then CodeSpec.pack).")
      .def(
          "float64_rows",
          [](const infer::Model& md, const py::array& x, double margin, int threads) {
            auto a = checked_array<float>(x, "x", 2, md.in_dim);
            check_threads(threads);
            if (!(margin > 0 && margin < 1)) throw py::value_error("margin must be in (0, 1)");
            const int64_t n = a.shape(0);
            std::vector<uint8_t> lv(static_cast<size_t>(n * md.dim));
            const float* xp = a.data();
            py::gil_scoped_release nogil;
            return infer::encode_levels(md, xp, n, lv.data(), threads, margin);
          },
          py::arg("x"), py::arg("margin"), py::arg("threads") = 1,
          "How many rows of x have a pre-activation that the float32 pass with this margin leaves to float64.")
      .def(
          "encode_query",
          [](const infer::Model& md, const py::array& x, int head, int threads) {
            auto a = checked_array<float>(x, "x", 2, md.in_dim);
            check_threads(threads);
            const int64_t n = a.shape(0);
            py::array_t<double> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(md.dim)});
            const float* xp = a.data();
            double* op = out.mutable_data();
            {
              py::gil_scoped_release nogil;
              infer::encode_query(md, head, xp, n, op, threads);
            }
            return out;
          },
          py::arg("x"), py::arg("head") = -1, py::arg("threads") = 1,
          "Query projection (head -1) or head direction, float64 (n, dim).")
      .def(
          "encode_query_codes",
          [](const infer::Model& md, const py::array& x, int qbits, int head, int threads) {
            auto a = checked_array<float>(x, "x", 2, md.in_dim);
            check_threads(threads);
            if (qbits < 1 || qbits > 7) throw py::value_error("bits must be in [1, 7], got " + std::to_string(qbits));
            const int64_t n = a.shape(0), cb = qbits * ((md.dim + 7) / 8);
            py::array_t<uint8_t> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(cb)});
            const float* xp = a.data();
            uint8_t* op = out.mutable_data();
            {
              py::gil_scoped_release nogil;
              infer::encode_query_codes(md, head, xp, n, qbits, op, threads);
            }
            return out;
          },
          py::arg("x"), py::arg("bits"), py::arg("head") = -1, py::arg("threads") = 1,
          "Packed max-cosine query codes (n, bits * ceil(dim / 8)).");

  m.def(
      "all_finite",
      [](const py::array& x) {
        auto a = checked_array<float>(x, "x", 2);
        const float* p = a.data();
        const int64_t n = static_cast<int64_t>(a.size());
        uint32_t bad = 0;  // any element with an all-ones exponent (inf or NaN)
        for (int64_t i = 0; i < n; ++i) {
          uint32_t u;
          std::memcpy(&u, p + i, 4);
          bad |= static_cast<uint32_t>((u & 0x7f800000u) == 0x7f800000u);
        }
        return bad == 0;
      },
      py::arg("x"), "True if a C-contiguous float32 (n, d) array holds no NaN or inf.");

  m.def(
      "quantize_angle",
      [](const py::array& v, int bits, int threads) {
        auto a = checked_array<double>(v, "values", 2);
        check_threads(threads);
        if (bits < 1 || bits > 7) throw py::value_error("bits must be in [1, 7], got " + std::to_string(bits));
        const int64_t n = a.shape(0), d = a.shape(1);
        py::array_t<uint8_t> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(d)});
        const double* vp = a.data();
        uint8_t* op = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          infer::quantize_angle(vp, n, d, bits, op, threads);
        }
        return out;
      },
      py::arg("values"), py::arg("bits"), py::arg("threads") = 1,
      "CodeSpec.quantize_angle of finite float64 rows: levels (n, dim) uint8.");
  m.def(
      "pack_levels",
      [](const py::array& levels, int bits) {
        auto a = checked_array<uint8_t>(levels, "levels", 2);
        if (bits < 1 || bits > 7) throw py::value_error("bits must be in [1, 7], got " + std::to_string(bits));
        const int64_t n = a.shape(0), d = a.shape(1), cb = bits * ((d + 7) / 8);
        py::array_t<uint8_t> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(cb)});
        const uint8_t* lp = a.data();
        uint8_t* op = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          infer::pack_levels(lp, n, d, bits, op);
        }
        return out;
      },
      py::arg("levels"), py::arg("bits"), "CodeSpec.pack of in-range uint8 levels (unchecked range).");
}

}  // namespace bebr
