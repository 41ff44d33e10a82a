"""CodeSpec: pack/unpack round trips and the documented layout."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bebr import CodeSpec


@settings(max_examples=60, deadline=None)
@given(dim=st.integers(1, 200), bits=st.integers(1, 4), n=st.integers(0, 9),
       seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(dim, bits, n, seed):
    spec = CodeSpec(dim, bits)
    levels = np.random.default_rng(seed).integers(0, 2**bits, size=(n, dim), dtype=np.uint8)
    packed = spec.pack(levels)
    assert packed.shape == (n, spec.code_bytes) and packed.dtype == np.uint8
    np.testing.assert_array_equal(spec.unpack(packed), levels)


def test_layout_is_bit_planes_msb_first():
    spec = CodeSpec(9, 2)
    levels = np.zeros((1, 9), np.uint8)
    levels[0, 0] = 2  # beta_0 = 1, beta_1 = 0
    levels[0, 8] = 1  # beta_0 = 0, beta_1 = 1
    assert spec.code_bytes == 4
    np.testing.assert_array_equal(spec.pack(levels)[0], [0b1, 0, 0, 0b1])


def test_values_and_quantize():
    spec = CodeSpec(4, 2)
    np.testing.assert_allclose(spec.level_values(), [-1.5, -0.5, 0.5, 1.5])
    lv = spec.quantize(np.array([[-9.0, -0.4, 0.1, 1.4]]))
    np.testing.assert_array_equal(lv, [[0, 1, 2, 3]])
    np.testing.assert_allclose(spec.values(spec.pack(lv)), [[-1.5, -0.5, 0.5, 1.5]])


@pytest.mark.parametrize("dim,bits,exc,match", [
    (0, 1, ValueError, "dim"), (8, 5, ValueError, "bits"), (8, 0, ValueError, "bits"),
    (8.0, 1, TypeError, "int"), (True, 1, TypeError, "int"),
])
def test_bad_spec(dim, bits, exc, match):
    with pytest.raises(exc, match=match):
        CodeSpec(dim, bits)


def test_bad_inputs():
    spec = CodeSpec(10, 2)
    with pytest.raises(ValueError, match=r"shape \(n, 10\)"):
        spec.pack(np.zeros((2, 9), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        spec.pack(np.full((1, 10), 4))
    with pytest.raises(TypeError, match="integer"):
        spec.pack(np.zeros((1, 10), np.float32))
    with pytest.raises(TypeError, match="uint8"):
        spec.unpack(np.zeros((1, 4), np.int8))
    with pytest.raises(ValueError, match="padding"):
        spec.unpack(np.full((1, 4), 0xFF, np.uint8))
