"""The compatibility ablations of tools/compat_lab.py (compatible training with its loss terms,
the forward code upgrader), kept runnable for the studies: a compact check on the GloVe rows
and v1 model of test_compat.py. Not bebr's API (BENCHMARKS.md section 3)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import bebr
from bebr import metrics
from bebr.datasets import l2_normalize
from bebr.fileio import CorruptFileError
import test_compat
from test_compat import DIM, KW
from test_io_hardening import _rewrite_weights, _seal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import compat_lab  # noqa: E402
from compat_lab import (CodeUpgrader, CompatWeights, compat_loss, train_compatible,  # noqa: E402
                        train_upgrader)

data, old_model = test_compat.data, test_compat.old_model  # the same fixtures (GloVe rows, v1)


@pytest.fixture(scope="module")
def new_model(data, old_model):
    g, x_new = data[:2]
    return train_compatible(x_new, g, old_model, version="v2",
                            cross_kwargs=dict(epochs=3, negatives=512), **KW)


def _recall(q_codes, g_codes, truth, spec):
    index = bebr.Index(spec, metric="cosine")
    index.add(g_codes)
    return metrics.recall_at_k(index.search(q_codes, 10)[1], truth)


def test_compatible_codes_meet_the_criterion_and_keep_their_lineage(tmp_path, data, old_model,
                                                                    new_model):
    g, x_new, q, base, truth = data
    spec = old_model.spec
    assert new_model.spec == spec
    assert new_model.version == "v2" and new_model.compatible_with == "v1"
    assert new_model.config.cross_versions == ["v1"]  # and a query head into v1's codes
    old_codes, new_codes = old_model.encode(g), new_model.encode(x_new)
    m_oo = _recall(old_codes[q], old_codes[base], truth, spec)
    m_no = _recall(new_codes[q], old_codes[base], truth, spec)
    m_nn = _recall(new_codes[q], new_codes[base], truth, spec)
    assert metrics.compatibility_criterion(m_no, m_oo), (m_no, m_oo)
    assert m_nn > m_oo
    assert 0 < metrics.update_gain(m_no, m_oo, m_nn) <= 1.5
    # the model file keeps the lineage, and bebr's torch-free loader reads it
    new_model.save(tmp_path / "v2")
    for loaded in (bebr.Binarizer.load(tmp_path / "v2"), bebr.Encoder.load(tmp_path / "v2")):
        assert loaded.compatible_with == "v1" and loaded.version == "v2"
        np.testing.assert_array_equal(loaded.encode(x_new[:50]), new_model.encode(x_new[:50]))


def test_compatible_chain_learns_heads_for_every_older_version(data, old_model, new_model):
    g, x_new = data[:2]
    x3 = l2_normalize(x_new + 0.2 * np.random.default_rng(3).standard_normal(
        x_new.shape).astype(np.float32))
    v3 = train_compatible(x3, x_new, new_model, version="v3",
                          older_codes={"v1": old_model.encode(g)},
                          cross_kwargs=dict(epochs=2, negatives=256), **KW)
    assert v3.compatible_with == "v2" and v3.config.cross_versions == ["v2", "v1"]
    assert v3.encode_query_codes(x3[:5], 4, target="v1").shape == (
        5, bebr.CodeSpec(DIM, 4).code_bytes)


def test_upgrader_round_trip_and_refused_files(tmp_path, data, old_model, new_model):
    g, x_new, q, base, truth = data
    old_codes = old_model.encode(g)
    up = train_upgrader(old_codes[base], new_model, x_new[base], epochs=1, hidden=64,
                        batch_size=512, progress=False, threads=1)
    assert (up.from_version, up.to_version) == ("v1", "v2")
    upgraded = up.upgrade(old_codes[base])
    assert upgraded.shape == old_codes[base].shape and upgraded.dtype == np.uint8
    old_model.spec.check_packed(upgraded)
    loaded = CodeUpgrader.load(up.save(tmp_path / "up"))
    np.testing.assert_array_equal(loaded.upgrade(old_codes[base]), upgraded)
    # each loader refuses the other's files by their kind
    with pytest.raises(CorruptFileError, match="Binarizer header"):
        bebr.Binarizer.load(tmp_path / "up")
    with pytest.raises(CorruptFileError, match="CodeUpgrader"):
        CodeUpgrader.load(old_model.save(tmp_path / "v1"))
    w = tmp_path / "up" / "model.safetensors"
    blob = bytearray(w.read_bytes())
    blob[-3] ^= 0xFF
    w.write_bytes(bytes(blob))
    with pytest.raises(CorruptFileError, match="SHA-256"):
        CodeUpgrader.load(tmp_path / "up")
    w.write_bytes(bytes(blob[:100]))
    with pytest.raises(CorruptFileError, match="truncated"):
        CodeUpgrader.load(tmp_path / "up")


@pytest.mark.parametrize("what", ["shape", "hidden", "bits"])
def test_upgrader_load_checks_weights_against_config(tmp_path, what):
    torch.manual_seed(0)
    CodeUpgrader(bebr.CodeSpec(32, 2), bebr.CodeSpec(32, 2), hidden=8, depth=1,
                 from_version="a", to_version="b").save(tmp_path / "u")
    if what == "shape":
        state = load_file(str(tmp_path / "u" / "model.safetensors"))
        key = sorted(state)[0]
        state[key] = torch.cat([state[key], state[key]])
        _rewrite_weights(tmp_path / "u", state)
    else:
        cfg = json.loads((tmp_path / "u" / "config.json").read_text())
        if what == "hidden":
            cfg["config"]["hidden"] = 10 ** 12  # refused before anything that big is built
        else:
            cfg["config"]["in_spec"]["bits"] = 6
        _seal(tmp_path / "u" / "config.json", cfg)
    match = {"shape": "has shape", "hidden": "has shape", "bits": "at most 4 bits"}[what]
    with pytest.raises(CorruptFileError, match=match):
        CodeUpgrader.load(tmp_path / "u")


def test_untrained_upgrader_is_identity():
    spec = bebr.CodeSpec(20, 3)
    up = CodeUpgrader(spec, spec, depth=1)
    torch.nn.init.zeros_(up.net.blocks[0].fc2.weight)
    levels = np.random.default_rng(0).integers(0, 8, (30, 20), dtype=np.uint8)
    packed = spec.pack(levels)
    np.testing.assert_array_equal(up.upgrade(packed), packed)


def test_bad_inputs(data, old_model):
    g, x_new = data[:2]
    with pytest.raises(ValueError, match="same items"):
        train_compatible(x_new[:100], g[:99], old_model, progress=False)
    bad = x_new[:100].copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train_compatible(bad, g[:100], old_model, progress=False)
    with pytest.raises(TypeError, match="must be a bebr.Binarizer"):
        train_compatible(x_new[:100], g[:100], "v1", progress=False)
    with pytest.raises(ValueError, match="in_dim=50"):
        train_compatible(x_new[:100], x_new[:100], old_model, progress=False)
    with pytest.raises(ValueError, match="share the old code space"):
        train_compatible(x_new[:100], g[:100], old_model, bits=1, progress=False)
    with pytest.raises(TypeError, match="older_codes"):
        train_compatible(x_new, g, old_model, older_codes=[old_model.encode(g)], **KW)
    with pytest.raises(ValueError, match="align"):
        train_compatible(x_new, g, old_model, align="rotate", **KW)
    with pytest.raises(ValueError, match="neighbor_pool"):
        train_compatible(x_new, g, old_model, neighbor_pool=1, **KW)
    with pytest.raises(TypeError, match="packed uint8 codes"):
        train_upgrader([1, 2], old_model, g, progress=False)
    with pytest.raises(ValueError, match="same items"):
        train_upgrader(old_model.encode(g[:10]), old_model, g[:20], progress=False)
    with pytest.raises(ValueError, match="pass x_old"):
        train_upgrader(old_model, old_model, g[:20], progress=False)
    with pytest.raises(ValueError, match="shape"):
        CodeUpgrader(old_model.spec, old_model.spec).upgrade(np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        CodeUpgrader(old_model.spec, old_model.spec).upgrade(old_model.encode(g[:2]),
                                                             batch_size=0)


def test_head_options_are_checked_before_training(data, old_model, monkeypatch):
    """Bad head options or older codes fail at once, not after the codes have trained."""
    g, x_new = data[:2]

    def no_training(*a, **k):
        raise AssertionError("train_binarizer ran before the head options were checked")
    monkeypatch.setattr(compat_lab, "train_binarizer", no_training)
    for ck, err, match in (({"members": 0}, ValueError, "members must be a positive int"),
                           ({"teacher": "x"}, ValueError, "teacher"),
                           ({"query_bits": 9}, ValueError, "query_bits"),
                           ({"bogus": 1}, TypeError, "cross_kwargs"),
                           ([("members", 2)], TypeError, "cross_kwargs must be a mapping")):
        with pytest.raises(err, match=match):
            train_compatible(x_new, g, old_model, cross_kwargs=ck, **KW)
    with pytest.raises(ValueError, match=r"older_codes\['v0'\] has"):
        train_compatible(x_new, g, old_model, older_codes={"v0": old_model.encode(g[:5])},
                         **KW)


def test_compat_weights_and_loss_terms():
    for bad, match in ((dict(compat=0, ract=0, cross_distill=0, unibct=0),
                        "all compatibility weights are 0"), (dict(ract=-1), ">= 0"),
                       (dict(neighbor_loss="l2"), "neighbor_loss"),
                       (dict(neighbor_k=0), "neighbor_k"), (dict(neighbor_k=2.5), "neighbor_k"),
                       (dict(neighbor_tau=0), "neighbor_tau"), (dict(neighbor=-1), ">= 0")):
        with pytest.raises(ValueError, match=match):
            CompatWeights(**bad)
    assert CompatWeights(compat=0, neighbor=1).neighbor == 1  # the neighbour term alone is enough
    rng = np.random.default_rng(0)
    x = torch.from_numpy(l2_normalize(rng.standard_normal((64, 16)).astype(np.float32)))
    old = torch.from_numpy(rng.standard_normal((64, 16)).astype(np.float32))
    shuffled = old[torch.randperm(64, generator=torch.Generator().manual_seed(0))]
    for w in (CompatWeights(compat=1, ract=0, cross_distill=0),
              CompatWeights(compat=0, ract=1, cross_distill=0),
              CompatWeights(compat=0, ract=0, cross_distill=0, unibct=1)):
        assert compat_loss(old.clone(), old, x, w) < compat_loss(shuffled, old, x, w)
    # the neighbour term prefers codes at their targets
    rng = np.random.default_rng(1)
    x = torch.from_numpy(l2_normalize(rng.standard_normal((64, 16)).astype(np.float32)))
    old8 = torch.from_numpy(rng.standard_normal((64, 8)).astype(np.float32))
    tgt = torch.from_numpy(rng.standard_normal((64, 8)).astype(np.float32))
    for form in ("nce", "cos"):
        w = CompatWeights(compat=0, neighbor=1, neighbor_loss=form)
        at = compat_loss(tgt.clone(), old8, x, w, tgt)
        assert at < compat_loss(old8.clone(), old8, x, w, tgt)
        assert at < compat_loss(tgt.flip(0), old8, x, w, tgt)
    with pytest.raises(ValueError, match="needs targets"):
        compat_loss(old8, old8, x, CompatWeights(neighbor=1))
    with pytest.raises(ValueError, match="needs targets"):
        compat_loss(old8, old8, x, CompatWeights(neighbor=1), tgt[:10])


def test_neighbor_targets_match_brute_force():
    rng = np.random.default_rng(2)
    xn = rng.standard_normal((300, 12)).astype(np.float32)
    ov = torch.from_numpy(rng.standard_normal((300, 6)).astype(np.float32))
    t = compat_lab._NeighborTargets(xn, ov, k=4, pool=120, seed=3)
    idx = np.array([5, 0, 299, 5, 17] + list(t.pool_rows[:3]))
    got = t(idx).numpy()
    xu = l2_normalize(xn)
    for row, g in zip(idx, got):
        sims = xu[t.pool_rows] @ xu[row]
        sims[t.pool_rows == row] = -np.inf  # the item itself is not its own neighbour
        nb = t.pool_rows[np.argsort(-sims)[:4]]
        want = ov[nb].numpy().mean(0)
        np.testing.assert_allclose(g, want / np.linalg.norm(want), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(t(idx).numpy(), got)  # cached rows give the same targets


def test_neighbor_term_trains_within_a_time_limit(data, old_model):
    g, x_new = data[:2]
    m = train_compatible(x_new, g, old_model, version="v2n", align="old",
                         weights=CompatWeights(neighbor=0.5, neighbor_k=5), neighbor_pool=500,
                         cross_queries=False, max_time_s=60, **dict(KW, epochs=1))
    assert m.spec == old_model.spec and m.compatible_with == "v1"
    assert m.config.cross_versions == []
    assert len(m.train_info["val_self_cross"]) == 2  # the init and one epoch
    assert m.train_info["compat_weights"]["neighbor"] == 0.5
    assert m.train_info["time_budget"]["max_time_s"] == 60
