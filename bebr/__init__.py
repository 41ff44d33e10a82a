"""bebr: binary embedding compression with versioned compatibility and a SIMD SDC kernel."""

from .codes import CodeSpec
from .collection import Collection
from .index import HammingIndex, Index, set_simd_level, simd_level, simd_levels
from . import metrics
from .model import Binarizer
from .train import train_binarizer
from .compat import (CodeUpgrader, CompatWeights, train_compatible, train_cross_queries,
                     train_upgrader)

__all__ = ["CodeSpec", "Collection", "HammingIndex", "Index", "metrics", "set_simd_level", "simd_level",
           "simd_levels",
           "Binarizer", "train_binarizer",
           "CodeUpgrader", "CompatWeights", "train_compatible", "train_cross_queries",
           "train_upgrader"]
__version__ = "0.1.0"
