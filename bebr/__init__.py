"""bebr: binary embedding compression with versioned compatibility and a SIMD SDC kernel."""

from .codes import CodeSpec
from .index import HammingIndex, Index, set_simd_level, simd_level, simd_levels
from . import metrics
from .model import Binarizer
from .train import train_binarizer

__all__ = ["CodeSpec", "HammingIndex", "Index", "metrics", "set_simd_level", "simd_level",
           "simd_levels",
           "Binarizer", "train_binarizer"]
__version__ = "0.1.0"
