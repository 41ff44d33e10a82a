"""Plane pruning (``Index.search(prune=)``): every SIMD level decides exactly as the scalar
reference, scores stay exact, a wide allowance is the exact search, recall holds on
structured data, bad values are refused."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bebr
from bebr import CodeSpec, reference
from bebr import index as bindex

LEVELS = bebr.simd_levels()


def _quantize(x: np.ndarray, bits: int) -> np.ndarray:
    """Levels 0..2^bits-1 of standardized float rows (equal-width bins over +-2 sd)."""
    z = (x - x.mean(0)) / (x.std(0) + 1e-9)
    n = 1 << bits
    return np.clip(np.floor((z + 2.0) / 4.0 * n), 0, n - 1).astype(np.uint8)


def clustered(seed: int, n: int, dim: int, nq: int):
    """Stored 2-bit codes and 4-bit query codes of a Gaussian mixture (queries near items)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(32, dim))
    x = centers[rng.integers(0, 32, n)] + 0.7 * rng.normal(size=(n, dim))
    q = x[rng.integers(0, n, nq)] + 0.5 * rng.normal(size=(nq, dim))
    both = np.vstack([x, q])
    spec, qspec = CodeSpec(dim, 2), CodeSpec(dim, 4)
    return spec, qspec, spec.pack(_quantize(both, 2)[:n]), qspec.pack(_quantize(both, 4)[n:])


def _at_level(level, fn):
    before = bebr.simd_level()
    bebr.set_simd_level(level)
    try:
        return fn()
    finally:
        bebr.set_simd_level(before)


@pytest.mark.parametrize("metric", ["ip", "cosine"])
@pytest.mark.parametrize("qbits", [1, 2, 3, 4])
def test_every_level_prunes_as_scalar(metric, qbits):
    """Same ids and scores at every level, for 1-5 queries (groups of 1..4 entries)."""
    spec, _, codes, _ = clustered(qbits, 3000, 96, 0)
    rng = np.random.default_rng(10 + qbits)
    qspec = CodeSpec(96, qbits)
    queries = qspec.pack(rng.integers(0, qspec.n_levels, (5, 96)))
    idx = bebr.Index(spec, metric)
    idx.add(codes)
    for nq in (1, 2, 3, 5):
        for prune in (0.5, 2.0, 3.0):
            want = _at_level("scalar", lambda: idx.search(queries[:nq], 10, threads=1,
                                                          query_bits=qbits, prune=prune))
            for lv in LEVELS[1:]:
                got = _at_level(lv, lambda: idx.search(queries[:nq], 10, threads=1,
                                                       query_bits=qbits, prune=prune))
                np.testing.assert_array_equal(got[1], want[1], err_msg=f"{lv} nq={nq} p={prune}")
                np.testing.assert_array_equal(got[0], want[0], err_msg=f"{lv} nq={nq} p={prune}")


def test_versions_and_filters_prune_as_scalar():
    """Version queries (several entries per heap) and a filter: levels agree."""
    spec, qspec, codes, queries = clustered(3, 2500, 64, 3)
    idx = bebr.Index(spec, "cosine")
    idx.add(codes[:1200], version="v1")
    idx.add(codes[1200:], version="v2")
    vq = {"v1": queries[::-1].copy()}
    cal = {"v1": (0.9, 0.01)}
    allow = np.ones(2500, bool)
    allow[::3] = False

    def run():
        return idx.search(queries, 8, threads=1, query_bits=4, version_queries=vq,
                          version_calibration=cal, filter=allow, prune=1.5)
    want = _at_level("scalar", run)
    for lv in LEVELS[1:]:
        got = _at_level(lv, run)
        np.testing.assert_array_equal(got[1], want[1], err_msg=lv)
        np.testing.assert_array_equal(got[0], want[0], err_msg=lv)


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_pruned_scores_are_exact_and_recall_holds(level, metric):
    spec, qspec, codes, queries = clustered(7, 6000, 128, 40)
    idx = bebr.Index(spec, metric)
    idx.add(codes)
    exact = idx.search(queries, 10, threads=1, query_bits=4)
    full = reference._scores(spec, qspec, queries, codes, metric)
    for prune in (3.0, 4.0):
        s, ids = idx.search(queries, 10, threads=1, query_bits=4, prune=prune)
        assert (ids >= 0).all()
        # every returned score is the item's exact score, best first
        np.testing.assert_allclose(s, np.take_along_axis(full, ids, 1), rtol=1e-6)
        assert (np.diff(s, axis=1) <= 0).all()
        overlap = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(ids, exact[1])])
        assert overlap >= 0.95, (prune, overlap)


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_single_queries_seeded_exact_scores_and_recall(level, metric):
    """One query at a time (the seeded scan: kernels.h SeedPicker): exact scores, recall."""
    spec, qspec, codes, queries = clustered(8, 6000, 128, 30)
    idx = bebr.Index(spec, metric)
    idx.add(codes)
    full = reference._scores(spec, qspec, queries, codes, metric)
    exact = idx.search(queries, 10, threads=1, query_bits=4)[1]
    got = [idx.search(queries[i:i + 1], 10, threads=1, query_bits=4, prune=3.0) for i in range(30)]
    s = np.vstack([g[0] for g in got])
    ids = np.vstack([g[1] for g in got])
    np.testing.assert_allclose(s, np.take_along_axis(full, ids, 1), rtol=1e-6)
    assert (np.diff(s, axis=1) <= 0).all()
    assert np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(ids, exact)]) >= 0.95


def test_seeded_chunks_filters_and_removals_prune_as_scalar():
    """A single query over more than one seed chunk (2,048 blocks), with removed items (dead
    blocks) and a filter: every level decides as the scalar reference."""
    rng = np.random.default_rng(21)
    spec, qspec = CodeSpec(16, 2), CodeSpec(16, 4)
    n = 64 * 2048 + 64 * 40 + 5
    codes = spec.pack(rng.integers(0, 4, (n, 16)))
    idx = bebr.Index(spec, "cosine")
    idx.add(codes)
    idx.remove(np.arange(64 * 100, 64 * 130))          # whole dead blocks
    allow = rng.random(n) < 0.7
    q = qspec.pack(rng.integers(0, 16, (2, 16)))
    for filt in (None, allow):
        for i in range(2):
            run = lambda: idx.search(q[i:i + 1], 7, threads=1, query_bits=4, prune=1.0,  # noqa: E731
                                     filter=filt)
            want = _at_level("scalar", run)
            for lv in LEVELS[1:]:
                got = _at_level(lv, run)
                np.testing.assert_array_equal(got[1], want[1], err_msg=lv)
                np.testing.assert_array_equal(got[0], want[0], err_msg=lv)


def test_wide_allowance_is_the_exact_search(level):
    """An allowance above the largest low-plane sum skips only what cannot enter: exact."""
    spec, qspec, codes, queries = clustered(5, 4000, 80, 12)
    for metric in ("ip", "cosine"):
        idx = bebr.Index(spec, metric)
        idx.add(codes)
        want = idx.search(queries, 10, threads=1, query_bits=4)
        got = idx.search(queries, 10, threads=1, query_bits=4, prune=1e6)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
        for i in range(3):  # one query: the seeded scan
            got = idx.search(queries[i:i + 1], 10, threads=1, query_bits=4, prune=1e6)
            np.testing.assert_array_equal(got[1][0], want[1][i])
            np.testing.assert_array_equal(got[0][0], want[0][i])


@pytest.mark.parametrize("bits", [1, 3, 4])
def test_other_code_widths_search_exactly(bits):
    rng = np.random.default_rng(bits)
    spec = CodeSpec(40, bits)
    codes = spec.pack(rng.integers(0, spec.n_levels, (500, 40)))
    idx = bebr.Index(spec, "cosine")
    idx.add(codes)
    q = codes[:4]
    want = idx.search(q, 5, threads=1)
    got = idx.search(q, 5, threads=1, prune=0.1)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_threads_prune_scores_stay_exact():
    spec, qspec, codes, queries = clustered(11, 20000, 64, 30)
    idx = bebr.Index(spec, "cosine")
    idx.add(codes)
    before = bindex.min_parallel_work()
    bindex.set_min_parallel_work(1)
    try:
        s, ids = idx.search(queries, 10, threads=2, query_bits=4, prune=3.0)
        assert bindex.last_search_stats()["workers"] == 2
    finally:
        bindex.set_min_parallel_work(before)
    full = reference._scores(spec, qspec, queries, codes, "cosine")
    np.testing.assert_allclose(s, np.take_along_axis(full, ids, 1), rtol=1e-6)
    exact = idx.search(queries, 10, threads=1, query_bits=4)[1]
    assert np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(ids, exact)]) >= 0.95


def test_threads_single_query_seeded_scores_stay_exact():
    """One query over two workers (each seeds its own block range): exact scores, recall."""
    spec, qspec, codes, queries = clustered(12, 20000, 64, 20)
    idx = bebr.Index(spec, "cosine")
    idx.add(codes)
    full = reference._scores(spec, qspec, queries, codes, "cosine")
    exact = idx.search(queries, 10, threads=1, query_bits=4)[1]
    before = bindex.min_parallel_work()
    bindex.set_min_parallel_work(1)
    try:
        got = []
        for i in range(len(queries)):
            got.append(idx.search(queries[i:i + 1], 10, threads=2, query_bits=4, prune=3.0))
            assert bindex.last_search_stats()["workers"] == 2
    finally:
        bindex.set_min_parallel_work(before)
    s = np.vstack([g[0] for g in got])
    ids = np.vstack([g[1] for g in got])
    np.testing.assert_allclose(s, np.take_along_axis(full, ids, 1), rtol=1e-6)
    assert np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(ids, exact)]) >= 0.95


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dim=st.integers(1, 140), n=st.integers(1, 400),
       prune=st.floats(0.01, 8.0), k=st.integers(1, 12))
def test_property_levels_agree_and_scores_exact(seed, dim, n, prune, k):
    rng = np.random.default_rng(seed)
    spec, qspec = CodeSpec(dim, 2), CodeSpec(dim, 4)
    codes = spec.pack(rng.integers(0, 4, (n, dim)))
    queries = qspec.pack(rng.integers(0, 16, (3, dim)))
    idx = bebr.Index(spec, "cosine")
    idx.add(codes)
    nq = 1 + seed % 3  # one query: the seeded scan; 2-3: a group
    run = lambda: idx.search(queries[:nq], k, threads=1, query_bits=4, prune=prune)  # noqa: E731
    want = _at_level("scalar", run)
    full = reference._scores(spec, qspec, queries[:nq], codes, "cosine")
    ok = want[1] >= 0
    np.testing.assert_allclose(want[0][ok], np.take_along_axis(full, np.where(ok, want[1], 0), 1)[ok],
                               rtol=1e-6)
    for lv in LEVELS[1:]:
        got = _at_level(lv, run)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("bad, err, match", [
    (0, ValueError, "finite number > 0"), (-1.0, ValueError, "finite number > 0"),
    (float("nan"), ValueError, "finite number > 0"), (float("inf"), ValueError, "> 0"),
    (True, TypeError, "standard deviations"), ("3", TypeError, "standard deviations")])
def test_bad_prune_refused(bad, err, match):
    spec = CodeSpec(16, 2)
    idx = bebr.Index(spec)
    idx.add(spec.pack(np.zeros((3, 16), np.uint8)))
    with pytest.raises(err, match=match):
        idx.search(spec.pack(np.zeros((1, 16), np.uint8)), 1, prune=bad)


def test_core_refuses_negative_prune():
    spec = CodeSpec(16, 2)
    idx = bebr.Index(spec)
    idx.add(spec.pack(np.zeros((3, 16), np.uint8)))
    args = idx._search_args(spec.pack(np.zeros((1, 16), np.uint8)), 1, 1, None, None)
    with pytest.raises(ValueError, match="prune must be a finite number >= 0"):
        idx._core.search(*args, prune=-1.0)
