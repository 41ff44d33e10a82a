"""bebr: binary embedding compression with versioned compatibility and a SIMD SDC kernel.

``import bebr`` does not import torch: the serving layer (codes, indexes, the torch-free
:class:`Encoder`, :func:`load_model`, :class:`Searcher`) is loaded eagerly, the training layer
(``Binarizer``, ``train_binarizer``, ``train_cross_queries``, ...) on first access.
"""

from importlib import import_module

from .codes import CodeSpec
from .collection import Collection
from .index import HammingIndex, Index, set_simd_level, simd_level, simd_levels
from .ivf import IVFIndex
from . import metrics
from .encoder import BinarizerConfig, Encoder, load_model
from .searcher import Searcher, search_args

# name -> submodule of the training layer (needs torch: pip install torch==2.13.0)
_LAZY = {"Binarizer": "model", "train_binarizer": "train",
         "train_cross_queries": "compat", "fit_head_calibration": "compat"}

__all__ = ["CodeSpec", "Collection", "HammingIndex", "Index", "IVFIndex", "metrics", "set_simd_level", "simd_level",
           "simd_levels",
           "Binarizer", "train_binarizer",
           "fit_head_calibration", "train_cross_queries",
           "BinarizerConfig", "Encoder", "load_model", "Searcher", "search_args"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY or name in ("model", "train", "compat"):
        try:
            mod = import_module(f".{_LAZY.get(name, name)}", __name__)
            value = mod if name in ("model", "train", "compat") else getattr(mod, name)
        except ModuleNotFoundError as e:
            if e.name != "torch":
                raise
            raise ImportError(f"bebr.{name} is part of the training layer, which needs torch "
                              f"(pip install torch==2.13.0, or pip install 'bebr[train]'); "
                              f"serving works without it: bebr.load_model / bebr.Encoder") from e
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bebr' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
