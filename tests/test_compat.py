"""Cross-version query heads and their calibrations on a few thousand real GloVe rows.

(The compatible-training and upgrader ablations of tools/compat_lab.py are tested in
test_compat_lab.py, on the fixtures of this module.)"""

import copy

import numpy as np
import pytest
import torch

import bebr
from bebr import metrics
from bebr.datasets import exact_topk, glove_words, l2_normalize
from bebr.train import train_binarizer

N, NQ, DIM, BITS = 2000, 200, 32, 2
KW = dict(epochs=3, progress=False, hidden=128, batch_size=512, seed=0, threads=1)


@pytest.fixture(scope="module")
def data():
    _, g = glove_words(N)
    rng = np.random.default_rng(7)
    # v2: a fixed random nonlinear map of GloVe plus item-specific features GloVe lacks,
    # so the new float space has neighbourhoods the old one does not know
    r = rng.standard_normal((50, 64)).astype(np.float32)
    x_new = l2_normalize(np.tanh(2.0 * g @ r) + 0.6 * rng.standard_normal((N, 64)).astype(
        np.float32))
    q = np.arange(NQ)
    base = np.arange(NQ, N)
    truth = exact_topk(x_new[q], x_new[base], 10)
    return g, x_new, q, base, truth


@pytest.fixture(scope="module")
def old_model(data):
    g = data[0]
    # centered like the new models of tools/compat_lab.py's train_compatible (whose
    # aligned init centers), so test_compat_lab.py can train against it
    return train_binarizer(g, DIM, BITS, version="v1", center=True, **KW)


# ---------------------------------------------------------------- cross-version query heads
HEAD_KW = dict(epochs=6, progress=False, seed=0, threads=1, negatives=512)


@pytest.fixture(scope="module")
def headed(data, old_model):
    """An independently trained new model plus a query head into v1's codes, learned from
    the gallery rows only (new floats + stored v1 codes)."""
    g, x_new, q, base, truth = data
    new = train_binarizer(x_new, DIM, BITS, version="v2-indep", **KW)
    return bebr.train_cross_queries(new, x_new[base], old_model.encode(g[base]), "v1",
                                    **HEAD_KW)


def test_query_head_searches_old_codes_better_than_old_queries(data, old_model, headed):
    g, x_new, q, base, truth = data
    spec, qspec = old_model.spec, bebr.CodeSpec(DIM, 4)
    old_codes = old_model.encode(g)
    index = bebr.Index(spec, "cosine")
    index.add(old_codes[base], version=1)
    m_oo = metrics.recall_at_k(index.search(old_model.encode_query_codes(g[q], 4), 10,
                                            query_bits=4)[1], truth)
    head_q = headed.encode_query_codes(x_new[q], 4, target="v1")
    m_no = metrics.recall_at_k(index.search(head_q, 10, query_bits=4)[1], truth)
    plain = metrics.recall_at_k(index.search(headed.encode(x_new[q]), 10)[1], truth)
    assert m_no > m_oo + 0.02 and m_no > plain + 0.05, (m_no, m_oo, plain)
    info = headed.train_info["cross_val"]["v1"]
    assert info["query_bits"] == 4 and info["members"] == 3 == len(info["member_logs"])
    # each member keeps its best epoch; the ensemble of the three is what the head scores
    assert info["member_best"] == [max(e["val_r10@10"] for e in lg)
                                   for lg in info["member_logs"]]
    assert len(headed.cross_head("v1").nets) == 3
    assert headed.config.cross_versions == ["v1"]
    with pytest.raises(ValueError, match="no query head for version 'v0'"):
        headed.encode_query_codes(x_new[q], 4, target="v0")


def test_mixed_index_with_version_queries_matches_reference(tmp_path, data, old_model,
                                                            headed):
    from bebr.reference import search_versions

    g, x_new, q, base, truth = data
    spec, qspec = old_model.spec, bebr.CodeSpec(DIM, 4)
    half = base[::2]
    rest = np.setdiff1d(base, half)
    index = bebr.Index(spec, "cosine")
    index.add(old_model.encode(g[rest]), rest, version=1)
    index.add(headed.encode(x_new[half]), half, version=2)
    q_self = headed.encode_query_codes(x_new[q], 4)
    q_head = headed.encode_query_codes(x_new[q], 4, target="v1")
    got = index.search(q_self, 10, query_bits=4, version_queries={1: q_head})
    ids = index.ids()
    codes = index.get_codes(ids)
    vers = np.where(np.isin(ids, half), 2, 1)
    want = search_versions(spec, q_self, codes, ids, vers, 10, "cosine", {1: q_head}, qspec)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    assert (got[1] == want[1]).mean() > 0.99
    # with the head's fitted calibration: the v1 items' scores mapped, one merged ranking
    cal = headed.cross_calibration("v1")
    got_c = index.search(q_self, 10, query_bits=4, version_queries={1: q_head},
                         version_calibration={1: cal})
    want_c = search_versions(spec, q_self, codes, ids, vers, 10, "cosine", {1: q_head}, qspec,
                             {1: cal})
    np.testing.assert_allclose(got_c[0], want_c[0], rtol=1e-5, atol=1e-5)
    assert (got_c[1] == want_c[1]).mean() > 0.99
    # a mixed index with heads finds more than one searched with the new codes alone
    alone = index.search(headed.encode(x_new[q]), 10)[1]
    assert metrics.recall_at_k(got[1], base[truth]) > metrics.recall_at_k(alone, base[truth])
    # the head is saved and loaded with the model
    loaded = bebr.Binarizer.load(headed.save(tmp_path / "v2h"))
    assert loaded.config.cross_versions == ["v1"]
    np.testing.assert_array_equal(loaded.encode_query_codes(x_new[q], 4, target="v1"), q_head)


def test_head_calibration_is_fitted_saved_and_consistent(tmp_path, data, old_model, headed):
    """The head's (scale, shift) makes a head score and the own score with the same fitted
    probability of being a true neighbour equal; it is saved with the model, and a model
    file from before calibration loads with the identity."""
    from bebr.compat import _logistic_1d

    g, x_new, q, base, truth = data
    a, b = headed.cross_calibration("v1")
    assert a > 0 and np.isfinite(b) and (a, b) != (1.0, 0.0)
    ip = headed.cross_calibration("v1", "ip")
    assert ip[0] > 0 and ip != (a, b)
    cal = headed.train_info["cross_val"]["v1"]["calibration"]
    assert cal["cosine"] == pytest.approx((a, b)) and cal["ip"] == pytest.approx(ip)
    with pytest.raises(ValueError, match="metric must be one of"):
        headed.cross_calibration("v1", "hamming")
    # logistic fits: the head's fit on mapped scores equals the own fit
    rng = np.random.default_rng(0)
    s_h, s_o = rng.normal(0.5, 0.1, 4000), rng.normal(0.7, 0.1, 4000)
    y_h = rng.random(4000) < 1 / (1 + np.exp(-(20 * s_h - 12)))
    y_o = rng.random(4000) < 1 / (1 + np.exp(-(15 * s_o - 12)))
    wh, ch = _logistic_1d(s_h, y_h)
    wo, co = _logistic_1d(s_o, y_o)
    assert wh == pytest.approx(20, rel=0.25) and ch == pytest.approx(-12, rel=0.25)
    am, bm = wh / wo, (ch - co) / wo
    w2, c2 = _logistic_1d(am * s_h + bm, y_h)
    assert (w2, c2) == pytest.approx((wo, co), rel=1e-4)
    loaded = bebr.Binarizer.load(headed.save(tmp_path / "cal"))
    assert loaded.cross_calibration("v1") == pytest.approx((a, b))
    assert loaded.cross_calibration("v1", "ip") == pytest.approx(ip)
    single = copy.deepcopy(headed)  # a one-member head, as written before ensembles
    single.cross_head("v1").nets = single.cross_head("v1").nets[:1]
    single.config.cross_members = []
    old_style = copy.deepcopy(single)  # the file layout before calibration and ensembles
    h = old_style.cross_head("v1")
    del h._buffers["calibration"]
    h.net = h.nets[0]
    del h.nets
    old_style.save(tmp_path / "before")
    assert any(".net." in k for k in old_style.state_dict())
    with pytest.warns(bebr.model.UncalibratedHeadWarning, match=r"\['v1'\]"):
        before = bebr.Binarizer.load(tmp_path / "before")  # loads, marked and warned
    assert before.uncalibrated_heads == ["v1"]
    assert before.cross_calibration("v1") == before.cross_calibration("v1", "ip") == (1.0, 0.0)
    np.testing.assert_array_equal(before.encode_query_codes(x_new[q], 4, target="v1"),
                                  single.encode_query_codes(x_new[q], 4, target="v1"))
    with pytest.raises(TypeError, match="calibrate must be a bool"):
        bebr.train_cross_queries(copy.deepcopy(headed), x_new[base], old_model.encode(g[base]),
                                 "v1", calibrate=1, **HEAD_KW)


def test_ensemble_head_averages_its_members_and_round_trips(tmp_path, data, old_model,
                                                           headed):
    g, x_new, q, base, truth = data
    m = bebr.train_cross_queries(copy.deepcopy(headed), x_new[base], old_model.encode(g[base]),
                                 "v1", members=2, **dict(HEAD_KW, epochs=2))
    head = m.cross_head("v1")
    assert len(head.nets) == 2 and m.config.cross_members == [2]
    info = m.train_info["cross_val"]["v1"]
    assert info["members"] == 2 and len(info["member_logs"]) == 2
    xq = torch.from_numpy(x_new[q[:20]])
    with torch.no_grad():
        want = (torch.nn.functional.normalize(head.member(0, xq), dim=1)
                + torch.nn.functional.normalize(head.member(1, xq), dim=1)) / 2
        np.testing.assert_allclose(head(xq).numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(head.member(0, xq), head.member(1, xq))
    loaded = bebr.Binarizer.load(m.save(tmp_path / "ens"))
    assert loaded.config.cross_members == [2]
    np.testing.assert_array_equal(loaded.encode_query_codes(x_new[q], 4, target="v1"),
                                  m.encode_query_codes(x_new[q], 4, target="v1"))
    # a second head of one member next to it keeps the per-head counts
    m.add_cross_head("v0")
    assert m.config.cross_members == [2, 1]
    with pytest.raises(ValueError, match="members must be a positive int"):
        bebr.train_cross_queries(copy.deepcopy(headed), x_new[base], old_model.encode(g[base]),
                                 "v1", members=0, **HEAD_KW)


def test_query_head_bad_inputs(data, old_model, headed):
    g, x_new, q, base, truth = data
    codes = old_model.encode(g[base])
    with pytest.raises(ValueError, match="row for row"):
        bebr.train_cross_queries(headed, x_new[base[:-1]], codes, "v1", **HEAD_KW)
    with pytest.raises(ValueError, match="in_dim"):
        bebr.train_cross_queries(headed, g[base], codes, "v1", **HEAD_KW)
    with pytest.raises(ValueError, match="own version"):
        bebr.train_cross_queries(headed, x_new[base], codes, "v2-indep", **HEAD_KW)
    with pytest.raises(ValueError, match="query_bits"):
        bebr.train_cross_queries(headed, x_new[base], codes, "v1", query_bits=5, **HEAD_KW)
    with pytest.raises(TypeError, match="uint8"):
        bebr.train_cross_queries(headed, x_new[base], codes.astype(np.int16), "v1", **HEAD_KW)
