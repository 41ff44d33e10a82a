"""Binarizer: forward semantics, encode format, save/load round trip and refusals."""

import json

import numpy as np
import pytest
import torch

from bebr.codes import CodeSpec
from bebr.fileio import CorruptFileError, header_digest
from bebr.model import Binarizer, sign_ste
from bebr.reference import search_codes


def _model(in_dim=12, dim=10, bits=3, seed=0, **kw):
    torch.manual_seed(seed)
    m = Binarizer(in_dim, dim, bits, hidden=16, **kw)
    m.eval()
    return m


def _data(n=64, d=12, seed=1):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_sign_ste_forward_backward():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.7, 3.0], requires_grad=True)
    y = sign_ste(x)
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_forward_codes_are_level_values_and_recurrence():
    m = _model()
    x = torch.from_numpy(_data())
    with torch.no_grad():
        out = m(x)
    assert out.codes.shape == (64, 10) and len(out.bits) == 3 and len(out.recon) == 2
    want = sum((2.0 ** -t) * b for t, b in enumerate(out.bits))
    torch.testing.assert_close(out.codes, want)
    grid = set(CodeSpec(10, 3).level_values().tolist())
    assert set(out.codes.flatten().tolist()) <= grid
    for b in out.bits:
        assert set(b.unique().tolist()) <= {-1.0, 1.0}


def test_forward_gradients_flow_through_all_steps():
    m = _model(bits=2)
    m.train()
    x = torch.from_numpy(_data())
    out = m(x)
    (out.codes * torch.randn_like(out.codes)).sum().backward()
    assert m.W.skip.weight.grad is not None and m.W.skip.weight.grad.abs().sum() > 0
    assert m.R[0].skip.weight.grad.abs().sum() > 0
    assert m.B[0].skip.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dim, bits", [(10, 1), (13, 2), (8, 3), (17, 4)])
def test_encode_matches_codespec_pack_and_reference_search(dim, bits):
    m = _model(dim=dim, bits=bits)
    x = _data(50)
    packed = m.encode(x, batch_size=7)
    lv = m.encode_levels(x)
    spec = CodeSpec(dim, bits)
    assert m.spec == spec
    assert packed.dtype == np.uint8 and packed.shape == (50, spec.code_bytes)
    np.testing.assert_array_equal(packed, spec.pack(lv))
    np.testing.assert_array_equal(spec.unpack(packed), lv)
    with torch.no_grad():
        codes = m(torch.from_numpy(x)).codes.numpy()
    np.testing.assert_array_equal(spec.values(packed), codes)
    np.testing.assert_array_equal(m.encode_values(x), codes)
    # search through the numpy reference equals brute force on the forward code values
    ids = np.arange(50)
    for metric in ("ip", "cosine"):
        s, i = search_codes(spec, packed[:5], packed, ids, 5, metric)
        v = codes.astype(np.float64)
        sims = v[:5] @ v.T
        if metric == "cosine":
            nrm = np.linalg.norm(v, axis=1)
            sims = sims / (nrm[:5, None] * nrm[None, :])
        np.testing.assert_allclose(s, np.sort(sims, axis=1)[:, ::-1][:, :5], rtol=1e-5)
    # batch size does not change the result; memmaps are accepted
    np.testing.assert_array_equal(m.encode(x, batch_size=1000), packed)


def test_encode_memmap_and_float64(tmp_path):
    m = _model()
    x = _data(40)
    p = tmp_path / "x.npy"
    np.save(p, x.astype(np.float64))
    mm = np.load(p, mmap_mode="r")
    np.testing.assert_array_equal(m.encode(mm, batch_size=16), m.encode(x))


@pytest.mark.parametrize("bad, exc, match", [
    (np.zeros((3, 5), np.float32), ValueError, "in_dim=12"),
    (np.zeros(12, np.float32), ValueError, "2-d"),
    (np.array([["a"] * 12]), TypeError, "numeric"),
    (np.full((2, 12), np.nan, np.float32), ValueError, "NaN"),
    (np.full((2, 12), np.inf, np.float32), ValueError, "NaN or inf"),
])
def test_encode_bad_inputs(bad, exc, match):
    with pytest.raises(exc, match=match):
        _model().encode(bad)


def test_encode_empty_and_bad_batch_size():
    m = _model()
    out = m.encode(np.zeros((0, 12), np.float32))
    assert out.shape == (0, m.spec.code_bytes)
    with pytest.raises(ValueError, match="batch_size"):
        m.encode(_data(4), batch_size=0)


@pytest.mark.parametrize("kw, exc", [({"dim": 0}, ValueError), ({"bits": 5}, ValueError),
                                     ({"bits": 2.0}, TypeError), ({"in_dim": 0}, ValueError)])
def test_bad_config(kw, exc):
    args = {"in_dim": 4, "dim": 4, "bits": 1}
    args.update(kw)
    with pytest.raises(exc):
        Binarizer(**args)


def test_version_id():
    a, b = _model(), _model()
    assert a.version and a.version != b.version
    assert _model(version="glove-v1").version == "glove-v1"


def test_save_load_round_trip(tmp_path):
    m = _model(version="v1")
    # non-trivial BatchNorm statistics
    m.train()
    with torch.no_grad():
        m(torch.from_numpy(_data(32)) * 3)
    m.eval()
    x = _data(80, seed=5)
    p = m.save(tmp_path / "model")
    assert sorted(f.name for f in p.iterdir()) == ["config.json", "model.safetensors"]
    header = json.loads((p / "config.json").read_text())
    assert header["model"] == "recurrent_binarizer" and header["format_version"] == 1
    assert header["code_spec"] == {"dim": 10, "bits": 3} and header["version"] == "v1"
    m2 = Binarizer.load(p)
    assert m2.version == "v1" and m2.spec == m.spec and not m2.training
    np.testing.assert_array_equal(m2.encode(x), m.encode(x))
    for k, v in m.state_dict().items():
        torch.testing.assert_close(m2.state_dict()[k], v, rtol=0, atol=0)


def test_load_refuses_corrupted_truncated_and_foreign(tmp_path):
    m = _model()
    p = m.save(tmp_path / "m")
    w = p / "model.safetensors"
    blob = w.read_bytes()
    w.write_bytes(blob[:-10])
    with pytest.raises(CorruptFileError, match="truncated"):
        Binarizer.load(p)
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0xFF
    w.write_bytes(bytes(bad))
    with pytest.raises(CorruptFileError, match="SHA-256"):
        Binarizer.load(p)
    w.write_bytes(blob)
    Binarizer.load(p)  # restored: loads again
    cfg = p / "config.json"
    text = cfg.read_text()
    cfg.write_text(text[: len(text) // 2])
    with pytest.raises(CorruptFileError, match="JSON"):
        Binarizer.load(p)
    h = json.loads(text)
    h["model"] = "os.system"
    cfg.write_text(json.dumps(h))
    with pytest.raises(CorruptFileError, match="header checksum mismatch"):
        Binarizer.load(p)
    h["header_sha256"] = header_digest(h)  # a crafted header, checksum and all
    cfg.write_text(json.dumps(h))
    with pytest.raises(CorruptFileError, match="unknown model name"):
        Binarizer.load(p)
    h = json.loads(text)
    h["format_version"] = 99
    cfg.write_text(json.dumps(h))
    with pytest.raises(CorruptFileError, match="format_version"):
        Binarizer.load(p)


def test_load_strict_keys(tmp_path):
    from safetensors.torch import save as st_save
    from bebr.fileio import header_digest, sha256_bytes

    m = _model()
    p = m.save(tmp_path / "m")
    state = {k: v.contiguous() for k, v in m.state_dict().items()}
    state.pop("W.skip.weight")
    state["extra.weight"] = torch.zeros(2)
    blob = st_save(state)
    (p / "model.safetensors").write_bytes(blob)
    h = json.loads((p / "config.json").read_text())
    h["weights_sha256"], h["weights_bytes"] = sha256_bytes(blob), len(blob)
    h["header_sha256"] = header_digest(h)
    (p / "config.json").write_text(json.dumps(h))
    with pytest.raises(CorruptFileError, match=r"missing keys \['W.skip.weight'\].*"
                                               r"unexpected keys \['extra.weight'\]"):
        Binarizer.load(p)


@pytest.mark.parametrize("dim, bits", [(10, 1), (13, 2), (33, 4)])
def test_encode_searches_identically_through_index_and_reference(dim, bits):
    import bebr

    if not hasattr(bebr, "Index"):
        pytest.skip("bebr.Index not built in this checkout")
    m = _model(dim=dim, bits=bits)
    x = _data(300, seed=7)
    codes = m.encode(x)
    q = m.encode(_data(9, seed=8))
    ids = np.arange(300) * 3 + 1
    for metric in ("ip", "cosine"):
        idx = bebr.Index(m.spec, metric)
        idx.add(codes, ids)
        s1, i1 = idx.search(q, 20)
        s2, i2 = search_codes(m.spec, q, codes, ids, 20, metric)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-6)
