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
    (0, 1, ValueError, "dim"), (8, 8, ValueError, "bits"), (8, 0, ValueError, "bits"),
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


def _cos(spec, levels, v):
    c = spec.level_values()[levels].astype(np.float64)
    return (c * v).sum(1) / np.linalg.norm(c, axis=1) / np.linalg.norm(v, axis=1)


@settings(max_examples=40, deadline=None)
@given(dim=st.integers(1, 70), bits=st.integers(1, 4), n=st.integers(1, 20),
       seed=st.integers(0, 2**31 - 1))
def test_quantize_angle_beats_every_fixed_step_rounding(dim, bits, n, seed):
    """The chosen code is at least as close in angle as rounding at any fixed step (numpy
    reference: CodeSpec.quantize of the row scaled to many RMS multiples)."""
    spec = CodeSpec(dim, bits)
    v = np.random.default_rng(seed).standard_normal((n, dim))
    lv = spec.quantize_angle(v)
    assert lv.shape == (n, dim) and lv.dtype == np.uint8 and lv.max() < spec.n_levels
    got = _cos(spec, lv, v)
    rms = np.sqrt((v * v).mean(1, keepdims=True))
    for step in np.geomspace(0.02, 3.0, 40):
        fixed = spec.quantize(v / rms / step)
        assert np.all(got >= _cos(spec, fixed, v) - 1e-9)
    if bits == 1:
        np.testing.assert_array_equal(lv, (v >= 0).astype(np.uint8))
    # only the direction matters (codes tied in angle may differ: compare the angles)
    np.testing.assert_allclose(_cos(spec, spec.quantize_angle(3.5 * v), v), got, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(dim=st.integers(1, 4), bits=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_quantize_angle_is_the_exact_optimum(dim, bits, seed):
    """Brute force over every code of a tiny spec: nothing has a larger cosine."""
    import itertools

    spec = CodeSpec(dim, bits)
    v = np.random.default_rng(seed).standard_normal((3, dim))
    allc = np.array(list(itertools.product(range(spec.n_levels), repeat=dim)), dtype=np.uint8)
    for row in v:
        best = _cos(spec, allc, np.broadcast_to(row, allc.shape)).max()
        got = _cos(spec, spec.quantize_angle(row[None]), row[None])[0]
        assert got >= best - 1e-9, (got, best)


def test_quantize_angle_zero_row_and_bad_input():
    spec = CodeSpec(5, 3)
    np.testing.assert_array_equal(spec.quantize_angle(np.zeros((2, 5))), np.full((2, 5), 4))
    with pytest.raises(ValueError, match=r"shape \(n, 5\)"):
        spec.quantize_angle(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN or inf"):
        spec.quantize_angle(np.full((1, 5), np.nan))
