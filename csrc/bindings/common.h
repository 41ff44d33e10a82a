// Shared binding helpers: array checks with named arguments and expected-vs-actual messages,
// and the C++ -> Python exception mapping (std::invalid_argument -> ValueError,
// std::out_of_range -> IndexError, std::bad_alloc -> MemoryError, the rest -> RuntimeError).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "index.h"

namespace bebr {
namespace py = pybind11;

inline std::string shape_str(const py::array& a) {
  std::ostringstream o;
  o << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) o << (i ? ", " : "") << a.shape(i);
  if (a.ndim() == 1) o << ",";
  o << ")";
  return o.str();
}

// A C-contiguous array of dtype T with ndim dims (and, if cols >= 0, shape[1] == cols).
template <class T>
py::array_t<T> checked_array(const py::array& a, const char* name, int ndim, py::ssize_t cols = -1) {
  // Equivalence, not identity: arrays from other sources (Ray object store, pickles) carry
  // equal but distinct dtype objects.
  if (!py::array_t<T>::check_(a))
    throw py::type_error(std::string(name) + " must have dtype " + std::string(py::str(py::dtype::of<T>())) +
                         ", got " + std::string(py::str(a.dtype())));
  if (a.ndim() != ndim)
    throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-d, got shape " + shape_str(a));
  if (cols >= 0 && a.shape(1) != cols)
    throw py::value_error(std::string(name) + " must have shape (n, " + std::to_string(cols) + "), got " + shape_str(a));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous (use numpy.ascontiguousarray)");
  return py::array_t<T>::ensure(a);
}

// A 1-d int64 id array (of length n if n >= 0).
inline py::array_t<int64_t> checked_ids(const py::array& ids, const char* name, py::ssize_t n) {
  auto a = checked_array<int64_t>(ids, name, 1);
  if (n >= 0 && a.shape(0) != n)
    throw py::value_error(std::string(name) + " must have length " + std::to_string(n) + " (one per code), got " +
                          std::to_string(a.shape(0)));
  return a;
}

template <class T>
py::array_t<T> to_array(const std::vector<T>& v) {
  py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

// get_codes of an SdcIndex or IvfIndex: (packed codes (n, code_bytes), versions (n,)) of
// ids (ValueError if one is absent), looked up with the GIL released.
template <class IndexT>
py::tuple codes_of(const IndexT& s, const py::array& ids) {
  auto i = checked_ids(ids, "ids", -1);
  const py::ssize_t n = i.shape(0);
  py::array_t<uint8_t> out({n, static_cast<py::ssize_t>(s.geometry().code_bytes)});
  py::array_t<int32_t> vers(n);
  uint8_t* op = out.mutable_data();
  int32_t* vp = vers.mutable_data();
  {
    py::gil_scoped_release nogil;
    s.get_codes(i.data(), n, op, vp);
  }
  return py::make_tuple(out, vers);
}

// SQ8 refine data (bebr.ivf.SQ8): uint8 codes (n, d) and per-column lo and step (d,), checked.
struct Sq8Data {
  py::array_t<uint8_t> rows;
  py::array_t<float> lo, step;
  py::ssize_t dim = 0;

  Sq8Data(const py::array& r, const py::array& l, const py::array& st)
      : rows(checked_array<uint8_t>(r, "SQ8 codes", 2)),
        lo(checked_array<float>(l, "SQ8 lo", 1)),
        step(checked_array<float>(st, "SQ8 step", 1)),
        dim(rows.shape(1)) {
    if (lo.shape(0) != dim || step.shape(0) != dim)
      throw py::value_error("SQ8 lo and step must have " + std::to_string(dim) + " entries (the codes' columns)");
  }
};

// The filter and version-query arguments of a search (SdcIndex and IvfIndex bindings),
// checked and converted while holding the GIL; the arrays stay alive with this object, so
// `filter` and `vq` may be used with the GIL released.
struct SearchInputs {
  FilterSpec filter;
  VersionQueries vq;

  SearchInputs(std::optional<py::array> allow_ids, std::optional<py::array> allow_mask,
               std::optional<py::array> exclude_ids, std::optional<py::array> exclude_mask, py::ssize_t nq,
               py::ssize_t query_bytes, const std::vector<int32_t>& versions, const std::vector<py::array>& codes,
               const std::vector<float>& scale, const std::vector<float>& shift)
      : versions_(versions), scale_(scale), shift_(shift) {
    if (allow_ids) {
      ai_ = checked_ids(*allow_ids, "filter ids", -1);
      filter.allow_ids = ai_->data();
      filter.n_allow_ids = ai_->shape(0);
    }
    if (allow_mask) {
      am_ = checked_array<bool>(*allow_mask, "filter mask", 1);
      filter.allow_mask = reinterpret_cast<const uint8_t*>(am_->data());
      filter.allow_mask_len = am_->shape(0);
    }
    if (exclude_ids) {
      ei_ = checked_ids(*exclude_ids, "exclude ids", -1);
      filter.exclude_ids = ei_->data();
      filter.n_exclude_ids = ei_->shape(0);
    }
    if (exclude_mask) {
      em_ = checked_array<bool>(*exclude_mask, "exclude mask", 1);
      filter.exclude_mask = reinterpret_cast<const uint8_t*>(em_->data());
      filter.exclude_mask_len = em_->shape(0);
    }
    if (versions_.size() != codes.size()) throw py::value_error("version queries: one code array per version");
    if ((!scale_.empty() && scale_.size() != versions_.size()) || (!shift_.empty() && shift_.size() != versions_.size()))
      throw py::value_error("version calibration: one scale and one shift per version, or none");
    for (size_t v = 0; v < codes.size(); ++v) {
      const std::string name = "queries for version " + std::to_string(versions_[v]);
      arrays_.push_back(checked_array<uint8_t>(codes[v], name.c_str(), 2, query_bytes));
      if (arrays_.back().shape(0) != nq)
        throw py::value_error(name + " must have " + std::to_string(nq) + " rows (one per query), got " +
                              std::to_string(arrays_.back().shape(0)));
      ptrs_.push_back(arrays_.back().data());
    }
    vq.n = static_cast<int>(ptrs_.size());
    vq.versions = versions_.data();
    vq.codes = ptrs_.data();
    vq.scale = scale_.empty() ? nullptr : scale_.data();
    vq.shift = shift_.empty() ? nullptr : shift_.data();
  }
  SearchInputs(const SearchInputs&) = delete;
  SearchInputs& operator=(const SearchInputs&) = delete;

 private:
  std::optional<py::array_t<int64_t>> ai_, ei_;
  std::optional<py::array_t<bool>> am_, em_;
  std::vector<int32_t> versions_;
  std::vector<float> scale_, shift_;
  std::vector<py::array_t<uint8_t>> arrays_;
  std::vector<const uint8_t*> ptrs_;
};

void register_simd(py::module_& m);
void register_index(py::module_& m);
void register_infer(py::module_& m);
void register_ivf(py::module_& m);

}  // namespace bebr
