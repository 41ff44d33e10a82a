// Shared binding helpers: array checks with named arguments and expected-vs-actual messages,
// and the C++ -> Python exception mapping (std::invalid_argument -> ValueError,
// std::out_of_range -> IndexError, std::bad_alloc -> MemoryError, the rest -> RuntimeError).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sstream>
#include <string>

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

void register_simd(py::module_& m);
void register_index(py::module_& m);
void register_infer(py::module_& m);
void register_ivf(py::module_& m);

}  // namespace bebr
