"""bebr: binary embedding compression with versioned compatibility and a SIMD SDC kernel."""

from ._C import simd_level
from .codes import CodeSpec
from . import metrics
from .model import Binarizer
from .train import train_binarizer

__all__ = ["CodeSpec", "metrics", "simd_level", "Binarizer", "train_binarizer"]
__version__ = "0.1.0"
