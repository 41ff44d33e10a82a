"""The compiled, torch-free inference path (bebr.encoder.Encoder, bebr._C.InferModel) against
torch: codes bit-identical to a float64 torch forward at every SIMD level, the float32 torch
path with its refinement, the numpy quantize_angle sweep, bad inputs, saved models."""

import contextlib
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import bebr
from bebr import CodeSpec, Encoder, Index
from bebr.encoder import FAST_MARGIN, FAST_MIN_ROWS
from bebr.fileio import CorruptFileError
from bebr.model import Binarizer

ROOT = Path(__file__).resolve().parents[1]
LEVELS = bebr.simd_levels()


@contextlib.contextmanager
def simd(level):
    before = bebr.simd_level()
    bebr.set_simd_level(level)
    try:
        yield
    finally:
        bebr.set_simd_level(before)


def make_model(in_dim, dim, bits, *, hidden=8, depth=1, heads=(), seed=0, cross_depth=1):
    """A Binarizer with random weights everywhere (BatchNorm statistics and means included)."""
    torch.manual_seed(seed)
    m = Binarizer(in_dim, dim, bits, hidden=hidden, depth=depth, version=f"v{seed}",
                  cross_versions=[f"old{i}" for i in range(len(heads))], cross_hidden=hidden,
                  cross_depth=cross_depth, cross_members=list(heads))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in m.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("running_var"):
                p.copy_(0.2 + r.abs())
            elif name.endswith("calibration"):
                p.copy_(torch.tensor([[1.5, -0.25], [0.75, 0.5]]))
            else:
                p.copy_(r / max(1.0, p.shape[-1] ** 0.5) if p.ndim == 2 else 0.3 * r)
    return m.eval()


def torch64_levels(model, x):
    """Reference: torch's forward in float64, the sign bits assembled into levels."""
    ref = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        o = ref(torch.from_numpy(np.asarray(x, dtype=np.float64)))
    lv = np.zeros((len(x), model.dim), dtype=np.uint8)
    for t, b in enumerate(o.bits):
        lv |= (b.numpy() > 0).astype(np.uint8) << (model.bits - 1 - t)
    return lv


def torch64_query_codes(model, x, bits, target=None):
    """Reference: float64 torch projection (or head), the numpy quantize_angle sweep, pack."""
    ref = copy.deepcopy(model).double().eval()
    xt = torch.from_numpy(np.asarray(x, dtype=np.float64))
    with torch.no_grad():
        z = ref.W(xt - ref.in_mean) if target is None else ref.cross_head(target)(xt)
    q = CodeSpec(model.dim, bits)
    return q.pack(q.quantize_angle_reference(z.numpy()))


def rows(n, d, seed):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


# --------------------------------------------------------------------------- identity
@pytest.mark.parametrize("level", LEVELS)
@settings(max_examples=12, deadline=None)
@given(in_dim=st.integers(1, 40), dim=st.integers(1, 40), bits=st.integers(1, 4),
       qbits=st.integers(1, 7), depth=st.integers(0, 2), hidden=st.integers(1, 24),
       heads=st.lists(st.integers(1, 3), max_size=2), n=st.integers(1, 40),
       seed=st.integers(0, 2**16))
def test_codes_match_torch_float64(level, in_dim, dim, bits, qbits, depth, hidden, heads, n,
                                   seed):
    model = make_model(in_dim, dim, bits, hidden=hidden, depth=depth, heads=heads, seed=seed)
    x = rows(n, in_dim, seed)
    with simd(level):
        enc = model.to_encoder()
        want = model.spec.pack(torch64_levels(model, x))
        assert np.array_equal(enc.encode(x), want)
        assert np.array_equal(model.encode(x), want)  # Binarizer's default: the compiled path
        assert np.array_equal(model.spec.pack(model._encode_levels_torch(x)), want)
        assert np.array_equal(enc.encode_query_codes(x, qbits), torch64_query_codes(model, x, qbits))
        for v in model.config.cross_versions:
            assert np.array_equal(model.encode_query_codes(x, qbits, target=v),
                                  torch64_query_codes(model, x, qbits, target=v))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("in_dim,dim,bits,depth", [(50, 50, 2, 0), (33, 17, 4, 1),
                                                   (64, 31, 3, 2), (9, 70, 1, 1),
                                                   (21, 45, 4, 0), (40, 9, 3, 0)])
def test_float32_pass_with_margin_matches_float64(level, in_dim, dim, bits, depth):
    """Batches of FAST_MIN_ROWS+ rows take the float32 pass (GEMMs over packed weights; the
    B stages of a depth-0 model by sign tables at the scalar level, the first one at avx2);
    pre-activations within the margin of 0 are evaluated in float64: the same codes as float64
    throughout, at 1 and 2 threads."""
    model = make_model(in_dim, dim, bits, hidden=32, depth=depth, seed=dim)
    x = rows(400, in_dim, 1).astype(np.float64)
    w = model.W.skip.weight.detach().double().numpy()[0]
    mu = model.in_mean.detach().double().numpy()
    if depth == 0:  # rows whose first pre-activation is ~0: float32 rounding decides its sign
        z = x[:200] - mu
        x[:200] = mu + z - np.outer(z @ w / (w @ w), w)
    x = x.astype(np.float32)
    with simd(level):
        core = model.to_encoder()._core
        want = torch64_levels(model, x)
        assert np.array_equal(core.encode_levels(x, 1, 0.0), want)
        assert np.array_equal(core.encode_levels(x, 1, FAST_MARGIN), want)
        assert np.array_equal(core.encode_levels(x, 2, FAST_MARGIN), want)
        assert np.array_equal(model.to_encoder().encode_levels(x, batch_size=37), want)
        packed = model.spec.pack(want)
        assert np.array_equal(core.encode_codes(x, 1, FAST_MARGIN), packed)
        assert np.array_equal(core.encode_codes(x, 3, FAST_MARGIN), packed)
        assert np.array_equal(core.encode_codes(x, 2, 0.0), packed)
        if depth == 0:  # without the margin the float32 signs differ somewhere
            assert not np.array_equal(core.encode_levels(x, 1, 1e-300), want)
            assert 200 <= core.float64_rows(x, FAST_MARGIN) < 400


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("in_dim,dim,bits,seed", [(1, 1, 3, 0), (2, 1, 4, 3), (1, 5, 2, 1)])
def test_fast_pass_with_residuals_near_zero(level, in_dim, dim, bits, seed):
    """Tiny models whose step residuals (input direction minus decoded direction) are often
    exactly 0 in float64: the float32 pass flags those steps (their rounding is large next
    to the residual) and gives the float64 codes."""
    model = make_model(in_dim, dim, bits, hidden=1, depth=0, seed=seed)
    x = rows(4 * FAST_MIN_ROWS, in_dim, seed)
    with simd(level):
        enc = model.to_encoder()
        assert np.array_equal(enc.encode(x), model.spec.pack(torch64_levels(model, x)))


def test_simd_levels_give_identical_float64_projections():
    model = make_model(45, 23, 3, hidden=19, depth=2, heads=[3], seed=5)
    x = rows(37, 45, 2)
    outs = []
    for level in LEVELS:
        with simd(level):
            core = model.to_encoder()._core
            outs.append((core.encode_query(x, -1, 1), core.encode_query(x, 0, 1),
                         core.encode_levels(x, 1)))
    for o in outs[1:]:
        for a, b in zip(o, outs[0]):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_give_identical_results(threads):
    model = make_model(20, 12, 2, heads=[2], seed=3)
    enc = model.to_encoder()
    x = rows(2 * FAST_MIN_ROWS, 20, 3)
    assert np.array_equal(enc.encode(x, threads=threads), enc.encode(x))
    assert np.array_equal(enc.encode_query_codes(x, 4, target="old0", threads=threads),
                          enc.encode_query_codes(x, 4, target="old0"))
    assert np.array_equal(enc.encode_query(x, threads=threads), enc.encode_query(x))


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_over_many_work_items(threads):
    """More rows than one work item (48 rows): items handed out over the helper threads,
    the same codes, levels, query codes and projections as one thread."""
    model = make_model(24, 19, 3, hidden=16, depth=0, heads=[1], seed=8)
    enc = model.to_encoder()
    x = rows(1000, 24, 8)
    assert np.array_equal(enc.encode(x, threads=threads), enc.encode(x))
    assert np.array_equal(enc.encode_levels(x, threads=threads), torch64_levels(model, x))
    assert np.array_equal(enc.encode_query_codes(x, 5, threads=threads), enc.encode_query_codes(x, 5))
    assert np.array_equal(enc.encode_query_codes(x, 3, target="old0", threads=threads),
                          enc.encode_query_codes(x, 3, target="old0"))
    assert np.array_equal(enc.encode_query(x, threads=threads), enc.encode_query(x))


def test_encode_query_is_the_float64_projection():
    model = make_model(30, 16, 2, seed=4)
    x = rows(11, 30, 4)
    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        z = ref.W(torch.from_numpy(x.astype(np.float64)) - ref.in_mean).numpy()
    got = model.encode_query(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, z, rtol=1e-6, atol=1e-6)
    assert np.array_equal(model.to_encoder().encode_query(x, target=None), got)
    np.testing.assert_array_equal(model.encode_values(x),
                                  model.spec.values(model.encode(x)))


# --------------------------------------------------------------------------- quantize_angle
@settings(max_examples=40, deadline=None)
@given(dim=st.integers(1, 70), bits=st.integers(1, 7), n=st.integers(1, 6),
       seed=st.integers(0, 2**16), zeros=st.booleans(), ties=st.booleans())
def test_quantize_angle_matches_numpy_sweep(dim, bits, n, seed, zeros, ties):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim))
    if ties:  # equal magnitudes and exact multiples: tied scales in the sweep
        v = np.round(v * 2) / 2
    if zeros:
        v[rng.random(v.shape) < 0.3] = 0.0
        v[0] = 0.0
    spec = CodeSpec(dim, bits)
    got = spec.quantize_angle(v)
    assert got.dtype == np.uint8 and got.shape == (n, dim)
    assert np.array_equal(got, spec.quantize_angle_reference(v))
    assert np.array_equal(bebr._C.pack_levels(got, bits), spec.pack(got))


@pytest.mark.parametrize("dim,bits", [(192, 2), (192, 4), (384, 4), (192, 7), (384, 7)])
def test_quantize_angle_matches_numpy_sweep_at_query_sizes(dim, bits):
    """Rows of query size: buckets of a few events (ranked by counting) and, with tied
    magnitudes, of many (sorted); Gaussian, heavy-tailed and rounded (tied) values."""
    rng = np.random.default_rng(dim * 10 + bits)
    v = np.concatenate([rng.standard_normal((6, dim)), rng.standard_t(2, (6, dim)),
                        np.round(rng.standard_normal((6, dim)) * 4) / 4])
    spec = CodeSpec(dim, bits)
    got = spec.quantize_angle(v)
    assert np.array_equal(got, spec.quantize_angle_reference(v))
    assert np.array_equal(bebr._C.pack_levels(got, bits), spec.pack(got))


def test_quantize_angle_rejects_bad_values():
    spec = CodeSpec(4, 3)
    with pytest.raises(ValueError, match="NaN or inf"):
        spec.quantize_angle(np.array([[0.0, np.nan, 1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        spec.quantize_angle(np.zeros((2, 5)))


# --------------------------------------------------------------------------- input errors
@pytest.mark.parametrize("kind", ["encoder", "binarizer"])
def test_bad_input_errors(kind):
    model = make_model(6, 5, 2, seed=1)
    m = model.to_encoder() if kind == "encoder" else model
    x = rows(3, 6, 0)
    bad = x.copy()
    bad[1, 2] = np.nan
    for fn in (m.encode, m.encode_levels, m.encode_query, m.encode_query_codes):
        with pytest.raises(ValueError, match=r"NaN or inf values in rows \[0, 3\)"):
            fn(bad)
        with pytest.raises(ValueError, match="the model expects in_dim=6"):
            fn(rows(3, 7, 0))
        with pytest.raises(TypeError, match="real numeric array"):
            fn(np.array([["a"] * 6]))
        with pytest.raises(ValueError, match=r"must be 2-d \(n, D\)"):
            fn(x[0])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        m.encode(x, batch_size=0)
    with pytest.raises(ValueError, match=r"bits must be an int in \[1, 7\]"):
        m.encode_query_codes(x, 8)
    with pytest.raises(ValueError, match="has no query head for version 'nope'"):
        m.encode_query_codes(x, 2, target="nope")
    assert m.encode(np.zeros((0, 6), np.float32)).shape == (0, model.spec.code_bytes)
    assert np.array_equal(m.encode(x.astype(np.float64)), m.encode(x))  # float64/int inputs
    assert np.array_equal(m.encode(x.tolist()), m.encode(x))


def test_encoder_pickles():
    import pickle

    model = make_model(6, 5, 2, heads=[2], seed=1)
    enc = model.to_encoder()
    enc2 = pickle.loads(pickle.dumps(enc))
    x = rows(4, 6, 0)
    assert np.array_equal(enc2.encode(x), enc.encode(x))
    assert np.array_equal(enc2.encode_query_codes(x, 3, target="old0"),
                          enc.encode_query_codes(x, 3, target="old0"))
    m2 = pickle.loads(pickle.dumps(model))
    assert np.array_equal(m2.encode(x), enc.encode(x))


def test_encoder_threads_checked():
    enc = make_model(6, 5, 2).to_encoder()
    with pytest.raises(ValueError, match="threads must be a positive int"):
        enc.encode(rows(2, 6, 0), threads=0)


# --------------------------------------------------------------------------- API parity
def test_encoder_has_the_serving_api_of_binarizer(tmp_path):
    model = make_model(12, 10, 2, heads=[1, 2], seed=7)
    model.save(tmp_path / "m")
    enc = bebr.load_model(tmp_path / "m")
    assert isinstance(enc, Encoder)
    for name in ("spec", "version", "in_dim", "dim", "bits", "compatible_with"):
        assert getattr(enc, name) == getattr(model, name)
    assert enc.config == model.config
    x = rows(9, 12, 1)
    for fn in ("encode", "encode_levels", "encode_values", "encode_query"):
        assert np.array_equal(getattr(enc, fn)(x), getattr(model, fn)(x)), fn
    for v in model.config.cross_versions:
        for metric in ("cosine", "ip"):
            assert enc.cross_calibration(v, metric) == model.cross_calibration(v, metric)
        assert np.array_equal(enc.encode_query_codes(x, 3, target=v),
                              model.encode_query_codes(x, 3, target=v))
    with pytest.raises(ValueError, match="metric must be one of"):
        enc.cross_calibration("old0", "l2")
    assert "Encoder(in_dim=12" in repr(enc)


def test_to_encoder_follows_weight_changes():
    model = make_model(8, 6, 2, seed=2)
    x = rows(20, 8, 2)
    e1 = model.to_encoder()
    assert model.to_encoder() is e1
    before = model.encode(x)
    with torch.no_grad():
        model.W.skip.weight.mul_(-1)
    assert model.to_encoder() is not e1
    after = model.encode(x)
    assert np.array_equal(after, model.spec.pack(torch64_levels(model, x)))
    assert not np.array_equal(after, before)


def test_device_option():
    model = make_model(8, 6, 2, seed=2)
    x = rows(5, 8, 2)
    assert np.array_equal(model.encode(x, device="cpu"), model.encode(x))
    with pytest.raises(ValueError, match="the model is on 'cpu'"):
        model.encode(x, device="meta")


def test_load_is_strict_and_checksummed(tmp_path):
    model = make_model(6, 5, 2, seed=1)
    p = model.save(tmp_path / "m")
    w = p / "model.safetensors"
    blob = bytearray(w.read_bytes())
    blob[-1] ^= 1
    w.write_bytes(bytes(blob))
    with pytest.raises(CorruptFileError, match="SHA-256 mismatch"):
        Encoder.load(p)
    model.save(p)
    hdr = json.loads((p / "config.json").read_text())
    hdr["config"]["depth"] = 2
    (p / "config.json").write_text(json.dumps(hdr))
    with pytest.raises(CorruptFileError, match="header checksum mismatch"):
        Encoder.load(p)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    del state["W.skip.weight"]
    with pytest.raises(CorruptFileError, match=r"missing keys \['W.skip.weight'\]"):
        Encoder(model.config, state)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    state["in_mean"] = state["in_mean"][:3]
    with pytest.raises(CorruptFileError, match=r"in_mean has shape \(3,\)"):
        Encoder(model.config, state)
    with pytest.raises(FileNotFoundError):
        Encoder.load(tmp_path / "absent")


# --------------------------------------------------------------------------- without torch
_NO_TORCH = """
import sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
import json
import numpy as np
import bebr
args = json.loads(sys.argv[1])
enc = bebr.load_model(args["model"])
x = np.load(args["x"])
codes = enc.encode(x)
assert np.array_equal(codes, np.load(args["codes"]))
qc = enc.encode_query_codes(x, 3)
assert np.array_equal(qc, np.load(args["qcodes"]))
index = bebr.Index(enc.spec, "cosine")
index.add(codes)
scores, ids = index.search(qc, 3, query_bits=3)
assert ids.shape == (len(x), 3) and (ids[:, 0] >= 0).all()
try:
    bebr.Binarizer
except ImportError as e:
    assert "pip install torch==2.13.0" in str(e), e
else:
    raise AssertionError("bebr.Binarizer without torch")
assert "torch" not in sys.modules or sys.modules["torch"] is None
print("ok")
"""


def test_serving_works_without_torch(tmp_path):
    model = make_model(16, 12, 2, seed=9)
    p = model.save(tmp_path / "m")
    x = rows(30, 16, 9)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "codes.npy", model.encode(x))
    np.save(tmp_path / "qcodes.npy", model.encode_query_codes(x, 3))
    args = json.dumps({"model": str(p), "x": str(tmp_path / "x.npy"),
                       "codes": str(tmp_path / "codes.npy"),
                       "qcodes": str(tmp_path / "qcodes.npy")})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", _NO_TORCH, args], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_import_bebr_does_not_import_torch(tmp_path):
    code = ("import sys, bebr; assert 'torch' not in sys.modules, 'torch imported'; "
            "from bebr import Binarizer; assert 'torch' in sys.modules; "
            "assert 'Binarizer' in bebr.__all__ and 'Encoder' in dir(bebr); print('ok')")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


# --------------------------------------------------------------------------- Searcher
def _two_versions():
    old = make_model(14, 11, 2, seed=21)
    new = make_model(14, 11, 2, heads=[2], seed=22)
    new.config.cross_versions[0] = old.version  # the head maps into old's code space
    xb = rows(300, 14, 5)
    index = Index(new.spec, "cosine")
    index.add(old.encode(xb[:150]), version=old.version)
    index.add(new.encode(xb[150:]), np.arange(150, 300), version=new.version)
    return old, new, index


@pytest.mark.parametrize("threads", [1, 2])
def test_searcher_matches_index_search_with_heads(threads):
    old, new, index = _two_versions()
    x = rows(7, 14, 6)
    enc = new.to_encoder()
    s = bebr.Searcher(new, index)
    got = s.search(x, 5, threads=threads)
    want = index.search(enc.encode_query_codes(x, 4), 5, query_bits=4,
                        version_queries={old.version: enc.encode_query_codes(x, 4,
                                                                              target=old.version)},
                        version_calibration={old.version: enc.cross_calibration(old.version)})
    assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0])
    kw = bebr.search_args(enc, index.versions(), x, query_bits=2, heads=False)
    assert set(kw) == {"queries", "query_bits"} and kw["query_bits"] == 2
    plain = s.search(x, 5, query_bits=2, heads=False)
    assert np.array_equal(plain[1], index.search(enc.encode_query_codes(x, 2), 5,
                                                 query_bits=2)[1])
    only = s.search(x, 5, filter=np.arange(150, 300))
    assert set(only[1].ravel().tolist()) <= set(range(150, 300))


def test_searcher_passes_prune():
    """Searcher.search(prune=) reaches the scan on the direct path and the heads path."""
    m = make_model(14, 11, 2, seed=32, heads=(1,))
    enc = m.to_encoder()
    index = Index(enc.spec, "cosine")
    index.add(enc.encode(rows(700, 14, 3)))
    x = rows(5, 14, 4)
    for heads in (False, True):
        s = bebr.Searcher(enc, index, heads=heads)
        kw = s.search_args(x)
        q = kw.pop("queries")
        for p in (0.5, 3.0):
            got = s.search(x, 6, prune=p, threads=1)
            want = index.search(q, 6, threads=1, prune=p, **kw)
            assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0])
        with pytest.raises(ValueError, match="prune"):
            s.search(x, 6, prune=-2.0)


@pytest.mark.parametrize("threads", [1, 2])
def test_searcher_without_heads_matches_index_search(threads):
    """Without version queries Searcher.search hands the encoder's codes to the compiled
    search directly: the same results as Index.search of those codes, filters included, and
    the same errors for bad input."""
    m = make_model(14, 11, 2, seed=31)
    enc = m.to_encoder()
    index = Index(enc.spec, "cosine")
    index.add(enc.encode(rows(500, 14, 7)))
    s = bebr.Searcher(enc, index)
    x = rows(6, 14, 8)
    for qb in (1, 2, 4):
        got = s.search(x, 9, query_bits=qb, threads=threads)
        want = index.search(enc.encode_query_codes(x, qb), 9, query_bits=qb, threads=threads)
        assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0])
    one = s.search(x[:1], 3, threads=threads)
    assert np.array_equal(one[1], index.search(enc.encode_query_codes(x[:1], 4), 3,
                                               query_bits=4)[1])
    mask = np.zeros(600, dtype=bool)
    mask[::2] = True
    got = s.search(x, 5, filter=mask, exclude=[0, 2, 4], threads=threads)
    want = index.search(enc.encode_query_codes(x, 4), 5, query_bits=4, filter=mask,
                        exclude=[0, 2, 4], threads=threads)
    assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0])
    bad = x[:1].copy()
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf values in rows \[0, 1\)"):
        s.search(bad, 3)
    bad[0, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        enc.encode_query_codes(bad)
    with pytest.raises(ValueError, match="columns, the model expects in_dim=14"):
        s.search(rows(1, 13, 0), 3)
    with pytest.raises(TypeError, match="real numeric array"):
        s.search(np.zeros((1, 14), dtype=bool), 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        s.search(x, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        s.search(x, 2.5)
    with pytest.raises(ValueError, match=r"query_bits must be in \[1, 4\] over 2-bit codes"):
        s.search(x, 3, query_bits=6)
    with pytest.raises(ValueError, match=r"bits must be an int in \[1, 7\]"):
        s.search(x, 3, query_bits=9)
    with pytest.raises(ValueError, match="threads must be a positive int"):
        s.search(x, 3, threads=0)
    with pytest.raises(TypeError, match="filter must be a boolean mask"):
        s.search(x, 3, filter=["a"])


def test_all_finite():
    a = rows(3, 5, 1)
    assert bebr._C.all_finite(a) and bebr._C.all_finite(a[:0])
    for v in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[2, 4] = v
        assert not bebr._C.all_finite(b)
    with pytest.raises(TypeError):
        bebr._C.all_finite(a.astype(np.float64))


def test_searcher_checks_spec():
    _, new, _ = _two_versions()
    with pytest.raises(ValueError, match="the index holds"):
        bebr.Searcher(new, Index(CodeSpec(11, 1)))
    with pytest.raises(TypeError, match="bebr.Encoder or a bebr.Binarizer"):
        bebr.Searcher(object(), Index(new.spec))


_NO_TORCH_CLI = """
import sys
sys.modules["torch"] = None
from bebr.cli import main
rc = main(sys.argv[1:])
assert sys.modules.get("torch") is None, "torch was imported"
sys.exit(rc)
"""


def test_cli_encode_index_search_without_torch(tmp_path):
    model = make_model(16, 12, 2, seed=11)
    p = model.save(tmp_path / "m")
    x = rows(500, 16, 11)
    np.save(tmp_path / "base.npy", x)
    np.save(tmp_path / "queries.npy", x[:5])
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def run(*args):
        r = subprocess.run([sys.executable, "-c", _NO_TORCH_CLI, *map(str, args)],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180)
        assert r.returncode == 0, r.stderr
        return r

    run("encode", "--model", p, tmp_path / "base.npy", "-o", tmp_path / "codes", "--no-progress")
    from bebr.io import CodeShards

    codes, ids = CodeShards(tmp_path / "codes").load_all()
    assert np.array_equal(codes, model.encode(x)) and np.array_equal(ids, np.arange(500))
    run("index", "build", tmp_path / "codes", "-o", tmp_path / "i.bebr")
    r = run("search", "--index", tmp_path / "i.bebr", "--model", p, tmp_path / "queries.npy",
            "-k", 3)
    found = [json.loads(line)["ids"] for line in r.stdout.splitlines()]
    assert [f[0] for f in found] == list(range(5))  # each base row finds itself first
    r = subprocess.run([sys.executable, "-c", _NO_TORCH_CLI, "train", str(tmp_path / "base.npy"),
                        "--dim", "8", "--bits", "1", "-o", str(tmp_path / "t")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180)
    assert r.returncode != 0 and "pip install torch==2.13.0" in r.stderr
