"""bebr.metrics against plain per-query formulas."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bebr import metrics as M


def _unique_rows(rng, nq, k, n):
    return np.stack([rng.choice(n, size=k, replace=False) for _ in range(nq)]).astype(np.int64)


@settings(max_examples=60, deadline=None)
@given(nq=st.integers(1, 12), k=st.integers(1, 10), kt=st.integers(1, 10),
       n=st.integers(20, 40), seed=st.integers(0, 2**31 - 1))
def test_recall_matches_set_formula(nq, k, kt, n, seed):
    rng = np.random.default_rng(seed)
    ret = _unique_rows(rng, nq, k, n)
    truth = _unique_rows(rng, nq, kt, n)
    expected = np.mean([len(set(ret[q]) & set(truth[q])) / kt for q in range(nq)])
    assert M.recall_at_k(ret, truth) == pytest.approx(expected)
    kk = max(1, k // 2)
    expected_k = np.mean([len(set(ret[q, :kk]) & set(truth[q])) / kt for q in range(nq)])
    assert M.recall_at_k(ret, truth, k=kk) == pytest.approx(expected_k)


def test_recall_ignores_padding_and_bounds():
    truth = np.array([[1, 2], [3, -1]])
    ret = np.array([[2, -1, 7], [3, 4, 5]])
    assert M.recall_at_k(ret, truth) == pytest.approx((0.5 + 1.0) / 2)
    assert M.recall_at_k(truth, truth) == 1.0
    with pytest.raises(ValueError, match="k must be in"):
        M.recall_at_k(ret, truth, k=4)
    with pytest.raises(ValueError, match="rows, expected 2"):
        M.recall_at_k(ret[:1], truth)
    with pytest.raises(TypeError, match="integer id array"):
        M.recall_at_k(ret.astype(float), truth)
    with pytest.raises(ValueError, match="no ground-truth"):
        M.recall_at_k(ret, np.array([[1, 2], [-1, -1]]))


def _ap(ret_row, q_label, gl):
    rel = [gl[i] == q_label if i >= 0 else False for i in ret_row]
    n_rel = int((gl == q_label).sum())
    hits, s = 0, 0.0
    for r, ok in enumerate(rel, 1):
        if ok:
            hits += 1
            s += hits / r
    return s / min(n_rel, len(ret_row))


@settings(max_examples=60, deadline=None)
@given(nq=st.integers(1, 10), k=st.integers(1, 8), n=st.integers(10, 30),
       n_classes=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_map_and_top1_match_loops(nq, k, n, n_classes, seed):
    rng = np.random.default_rng(seed)
    gl = rng.integers(0, n_classes, n)
    ql = gl[rng.integers(0, n, nq)]  # every query label occurs in the gallery
    ret = _unique_rows(rng, nq, k, n)
    expected = np.mean([_ap(ret[q], ql[q], gl) for q in range(nq)])
    assert M.mean_average_precision(ret, ql, gl) == pytest.approx(expected)
    assert M.top1_accuracy(ret, ql, gl) == pytest.approx(np.mean(gl[ret[:, 0]] == ql))


def test_map_perfect_list_and_errors():
    gl = np.array([0, 0, 0, 1, 1])
    ql = np.array([0, 1])
    ret = np.array([[0, 1], [3, 4]])
    assert M.mean_average_precision(ret, ql, gl) == 1.0  # R=3 > k=2 still perfect
    with pytest.raises(ValueError, match="no relevant"):
        M.mean_average_precision(ret, np.array([0, 7]), gl)
    with pytest.raises(ValueError, match="must be < 5"):
        M.top1_accuracy(np.array([[9], [0]]), ql, gl)


def test_top1_correct_and_flips():
    truth = np.array([[1, 2], [3, 4], [5, 6]])
    old = np.array([[1, 9], [9, 3], [6, 0]])
    new = np.array([[9, 1], [4, 3], [-1, 0]])
    oc = M.top1_correct(old, truth)
    nc = M.top1_correct(new, truth)
    np.testing.assert_array_equal(oc, [True, False, True])
    np.testing.assert_array_equal(nc, [False, True, False])
    assert M.negative_flip_rate(oc, nc) == pytest.approx(2 / 3)
    assert M.negative_flip_rate(nc, nc) == 0.0
    with pytest.raises(ValueError, match="either truth or both"):
        M.top1_correct(old)
    with pytest.raises(TypeError, match="bool arrays"):
        M.negative_flip_rate(oc.astype(int), nc)
    with pytest.raises(ValueError, match="equal-length"):
        M.negative_flip_rate(oc, nc[:2])


@settings(max_examples=50, deadline=None)
@given(oc=st.lists(st.booleans(), min_size=1, max_size=30), seed=st.integers(0, 1000))
def test_flip_rate_formula(oc, seed):
    a = np.array(oc)
    b = np.random.default_rng(seed).random(a.shape[0]) < 0.5
    expected = sum(x and not y for x, y in zip(a, b)) / len(a)
    assert M.negative_flip_rate(a, b) == pytest.approx(expected)


def test_compat_criterion_gain_share():
    assert M.compatibility_criterion(0.5, 0.4)
    assert not M.compatibility_criterion(0.4, 0.4)
    assert M.update_gain(0.5, 0.4, 0.8) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="undefined"):
        M.update_gain(0.5, 0.4, 0.4)
    with pytest.raises(ValueError, match="finite"):
        M.compatibility_criterion(float("nan"), 0.4)
    m = {(1, 1): 0.3, (2, 2): 0.6, (3, 3): 0.7, (2, 1): 0.35, (3, 1): 0.25, (3, 2): 0.65}
    assert M.multi_version_compat_share(m, [1, 2, 3]) == pytest.approx(2 / 3)
    with pytest.raises(KeyError, match="lacks"):
        M.multi_version_compat_share(m, [1, 2, 4])
    with pytest.raises(ValueError, match="at least two"):
        M.multi_version_compat_share(m, [1])


def test_cross_test_calls_search_per_pair():
    q = {"a": np.array([[0]]), "b": np.array([[1]])}
    g = {"a": np.array([[10]]), "b": np.array([[20]])}
    out = M.cross_test(q, g, search=lambda x, y: np.array([[x[0, 0] + y[0, 0]]]),
                       metric=lambda ids: float(ids[0, 0]))
    assert out == {("a", "a"): 10.0, ("a", "b"): 20.0, ("b", "a"): 11.0, ("b", "b"): 21.0}
    with pytest.raises(KeyError, match="no gallery codes"):
        M.cross_test(q, g, lambda x, y: x, lambda i: 0.0, pairs=[("a", "c")])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 200), seed=st.integers(0, 100),
       fr=st.lists(st.floats(0, 1), min_size=2, max_size=5))
def test_backfill_subsets_nested_and_sized(n, seed, fr):
    fr = sorted(fr)
    masks = [M.backfill_subset(n, f, seed) for f in fr]
    for f, m in zip(fr, masks):
        assert m.sum() == int(round(f * n))
    for a, b in zip(masks, masks[1:]):
        assert not np.any(a & ~b)  # nested
    np.testing.assert_array_equal(M.backfill_subset(n, fr[-1], seed), masks[-1])


def test_curve_area_trapezoid():
    assert M.curve_area([0, 0.5, 1], [0.2, 0.2, 0.2]) == pytest.approx(0.2)
    assert M.curve_area([0, 1], [0, 1]) == pytest.approx(0.5)
    assert M.curve_area([0, 0.25, 1], [0, 1, 1]) == pytest.approx(0.125 + 0.75)
    with pytest.raises(ValueError, match="strictly increasing"):
        M.curve_area([0, 0, 1], [1, 1, 1])
    with pytest.raises(ValueError, match=">= 2 points"):
        M.curve_area([0], [1])


def test_backfill_curve_end_points_and_plot(tmp_path):
    # gallery items carry their own id in the code; "new" codes are exact, "old" are shifted,
    # so a query finds its target only once that item is upgraded
    n = 40
    old = np.arange(n)[:, None] + 1000
    new = np.arange(n)[:, None]
    queries = np.arange(n)[:, None]
    truth = np.arange(n)[:, None]

    def search(q, g):
        return np.array([[int(np.flatnonzero(g[:, 0] == x[0])[0]) if x[0] in g[:, 0] else -1]
                         for x in q])

    metric = lambda ids: M.recall_at_k(ids, truth)  # noqa: E731
    base = np.ones(n, dtype=bool)
    curve = M.backfill_curve(queries, old, new, search, metric, seed=3,
                             correct=lambda ids: M.top1_correct(ids, truth),
                             baseline_correct=base, label="toy")
    np.testing.assert_allclose(curve.values, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve.flip_rates, [1, 0.75, 0.5, 0.25, 0.0])
    assert curve.area == pytest.approx(0.5)
    png = M.plot_backfill([curve], tmp_path / "c.png", references={"M(old,old)": 0.1})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="share shape"):
        M.mix_gallery(old, new[:3], np.ones(n, bool))
    with pytest.raises(ValueError, match="both correct"):
        M.backfill_curve(queries, old, new, search, metric, correct=lambda i: i)
