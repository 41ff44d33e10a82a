#include <pybind11/pybind11.h>
#include "dispatch.h"
namespace py = pybind11;
PYBIND11_MODULE(_C, m) {
  m.doc() = "bebr compiled core";
  m.def("simd_level", &bebr::simd_level_name, "The SIMD level the kernels run at.");
}
