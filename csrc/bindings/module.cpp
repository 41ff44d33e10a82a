// The one PYBIND11_MODULE of bebr._C: registers each concept's bindings.
#include "common.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "bebr compiled core (private; use the bebr package)";
  bebr::register_simd(m);
  bebr::register_index(m);
  bebr::register_infer(m);
  bebr::register_ivf(m);
}
