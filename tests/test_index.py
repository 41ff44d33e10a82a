"""bebr.Index / bebr.HammingIndex against the numpy reference: search, filters, removal, input
checks, threads."""

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bebr
from bebr import CodeSpec, reference

LEVELS = bebr.simd_levels()


def random_codes(rng, spec, n, levels=None):
    hi = spec.n_levels if levels is None else levels
    return spec.pack(rng.integers(0, hi, (n, spec.dim)))


def check_cosine(spec, queries, codes, ids, k, got, allowed=None):
    """Scores within float tolerance of the reference; ids valid for their reported scores."""
    want_s, _ = reference.search_codes(spec, queries, codes, ids, k, "cosine", allowed)
    np.testing.assert_allclose(got[0], want_s, rtol=1e-5, atol=1e-6)
    full = reference.search_codes(spec, queries, codes, ids, max(1, len(ids)), "cosine")
    for q in range(len(queries)):
        true = dict(zip(full[1][q].tolist(), full[0][q].tolist()))
        for s, i in zip(got[0][q], got[1][q]):
            if i == -1:
                assert s == -np.inf
            else:
                assert abs(true[int(i)] - s) <= 1e-5
    for row in got[1]:
        valid = row[row >= 0]
        assert len(set(valid.tolist())) == len(valid)  # no id twice


# ---------------------------------------------------------------- property tests vs reference
@settings(max_examples=60, deadline=None)
@given(dim=st.sampled_from([1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 65, 100, 256]),
       bits=st.integers(1, 4), n=st.integers(0, 300), nq=st.integers(1, 6),
       k=st.integers(1, 40), few_levels=st.booleans(), threads=st.sampled_from([1, 3]),
       seed=st.integers(0, 2**32 - 1), level_i=st.integers(0, len(LEVELS) - 1))
def test_search_matches_reference(dim, bits, n, nq, k, few_levels, threads, seed, level_i):
    rng = np.random.default_rng(seed)
    spec = CodeSpec(dim, bits)
    # few distinct levels and duplicated rows make many exact ties
    codes = random_codes(rng, spec, n, 1 if few_levels and bits > 1 else None)
    if n > 4:
        codes[rng.integers(0, n, n // 4)] = codes[0]
    queries = random_codes(rng, spec, nq)
    ids = rng.permutation(5 * n + 3)[:n].astype(np.int64)
    before = bebr.simd_level()
    bebr.set_simd_level(LEVELS[level_i])
    try:
        ip = bebr.Index(spec, "ip")
        ip.add(codes, ids)
        cos = bebr.Index(spec, "cosine")
        cos.add(codes, ids)
        got_ip = ip.search(queries, k, threads=threads)
        got_cos = cos.search(queries, k, threads=threads)
    finally:
        bebr.set_simd_level(before)
    want = reference.search_codes(spec, queries, codes, ids, k)
    np.testing.assert_array_equal(got_ip[0], want[0])
    np.testing.assert_array_equal(got_ip[1], want[1])
    assert got_ip[0].dtype == np.float32 and got_ip[1].dtype == np.int64
    assert got_ip[0].shape == (nq, k)
    check_cosine(spec, queries, codes, ids, k, got_cos)


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 4), n=st.integers(1, 250), k=st.integers(1, 20),
       seed=st.integers(0, 2**32 - 1), as_mask=st.booleans(), exclude=st.booleans(),
       nremove=st.integers(0, 100))
def test_filters_and_removals_match_reference(bits, n, k, seed, as_mask, exclude, nremove):
    rng = np.random.default_rng(seed)
    spec = CodeSpec(37, bits)
    codes = random_codes(rng, spec, n)
    queries = random_codes(rng, spec, 3)
    idx = bebr.Index(spec)
    ids = idx.add(codes)
    removed = rng.choice(ids, min(nremove, n), replace=False)
    idx.remove(removed)
    chosen = rng.random(n) < 0.5
    allowed = ~np.isin(ids, removed) & (~chosen if exclude else chosen)
    flt = chosen if as_mask else ids[chosen]
    kw = {"exclude": flt} if exclude else {"filter": flt}
    got = idx.search(queries, k, threads=2, **kw)
    want = reference.search_codes(spec, queries, codes, ids, k, allowed=allowed)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    assert len(idx) == n - len(removed)


@settings(max_examples=30, deadline=None)
@given(nbits=st.integers(1, 200), n=st.integers(0, 200), k=st.integers(1, 30),
       seed=st.integers(0, 2**32 - 1))
def test_hamming_matches_reference(nbits, n, k, seed):
    rng = np.random.default_rng(seed)
    spec = CodeSpec(nbits, 1)
    codes = random_codes(rng, spec, n)
    queries = random_codes(rng, spec, 4)
    h = bebr.HammingIndex(nbits)
    h.add(codes)
    got = h.search(queries, k, threads=2)
    want = reference.hamming_search(queries, codes, np.arange(n), k)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


# ---------------------------------------------------------------- behaviour
def test_padding_and_small_index(level):
    spec = CodeSpec(16, 2)
    idx = bebr.Index(spec)
    s, i = idx.search(spec.pack(np.zeros((2, 16), int)), 3)
    assert (i == -1).all() and np.isneginf(s).all()
    idx.add(spec.pack(np.ones((1, 16), int)), ids=[42])
    s, i = idx.search(spec.pack(np.zeros((1, 16), int)), 3)
    assert i.tolist() == [[42, -1, -1]]
    assert s[0, 0] == pytest.approx(16 * 0.75) and np.isneginf(s[0, 1:]).all()
    h = bebr.HammingIndex(8)
    s, i = h.search(np.zeros((1, 1), np.uint8), 2)
    assert (i == -1).all() and np.isposinf(s).all()


def test_ties_break_by_smaller_id(level):
    spec = CodeSpec(9, 3)
    code = spec.pack(np.full((1, 9), 5))
    idx = bebr.Index(spec)
    idx.add(np.repeat(code, 130, axis=0), ids=np.arange(1000, 870, -1))
    s, i = idx.search(code, 5, threads=2)
    assert i.tolist() == [[871, 872, 873, 874, 875]]
    assert len(set(s[0].tolist())) == 1


def test_default_ids_continue_and_exact_scale():
    spec = CodeSpec(4, 2)
    idx = bebr.Index(spec)
    assert idx.add(spec.pack([[3, 3, 3, 3]])).tolist() == [0]
    assert idx.add(spec.pack([[0, 0, 0, 0], [1, 2, 1, 2]])).tolist() == [1, 2]
    idx.add(spec.pack([[2, 2, 2, 2]]), ids=[10])
    assert idx.add(spec.pack([[2, 2, 2, 2]])).tolist() == [11]
    s, i = idx.search(spec.pack([[3, 3, 3, 3]]), 5)
    # values 1.5 and 0.5: <1.5*1, 1.5*1> = 4*2.25 = 9
    assert i[0, 0] == 0 and s[0, 0] == 9.0
    assert s[0, -1] == -9.0 and i[0, -1] == 1


def test_remove_unknown_is_atomic():
    spec = CodeSpec(8, 1)
    idx = bebr.Index(spec)
    idx.add(spec.pack(np.eye(8, dtype=int)))
    with pytest.raises(ValueError, match="cannot remove id 99"):
        idx.remove([1, 99])
    assert len(idx) == 8 and 1 in idx
    idx.remove([1, 1, 2])
    assert len(idx) == 6 and 1 not in idx
    with pytest.raises(ValueError, match="already in the index"):
        idx.add(spec.pack(np.eye(8, dtype=int))[:2], ids=[3, 100])
    assert len(idx) == 6 and 100 not in idx


def test_remove_compacts_and_keeps_results(level):
    rng = np.random.default_rng(1)
    spec = CodeSpec(70, 2)
    codes = random_codes(rng, spec, 2000)
    q = random_codes(rng, spec, 3)
    idx = bebr.Index(spec)
    ids = idx.add(codes)
    gone = ids[rng.random(2000) < 0.8]
    idx.remove(gone)  # triggers automatic compaction
    keep = ~np.isin(ids, gone)
    want = reference.search_codes(spec, q, codes[keep], ids[keep], 10)
    got = idx.search(q, 10)
    np.testing.assert_array_equal(got[1], want[1])
    idx.compact()
    np.testing.assert_array_equal(idx.search(q, 10)[1], want[1])
    np.testing.assert_array_equal(idx.get_codes(ids[keep][:5]), codes[keep][:5])


def test_filter_forms_and_unknown_filter_ids():
    spec = CodeSpec(8, 1)
    idx = bebr.Index(spec)
    idx.add(spec.pack(np.tile(np.arange(8) % 2, (10, 1))))
    q = spec.pack(np.zeros((1, 8), int))
    assert idx.search(q, 3, filter={7, 3, 12345})[1].tolist() == [[3, 7, -1]]
    assert idx.search(q, 3, filter=[9])[1].tolist() == [[9, -1, -1]]
    mask = np.zeros(5, bool)
    mask[[1, 4]] = True  # ids past the mask's end read as False
    assert idx.search(q, 3, filter=mask)[1].tolist() == [[1, 4, -1]]
    assert idx.search(q, 3, exclude=mask)[1].tolist() == [[0, 2, 3]]
    assert idx.search(q, 3, filter=[1, 2, 4], exclude=[2])[1].tolist() == [[1, 4, -1]]
    assert idx.search(q, 2, filter=[])[1].tolist() == [[-1, -1]]


def test_bad_inputs():
    spec = CodeSpec(12, 2)
    idx = bebr.Index(spec)
    good = spec.pack(np.zeros((3, 12), int))
    with pytest.raises(TypeError, match="uint8"):
        idx.add(good.astype(np.int64))
    with pytest.raises(TypeError, match="uint8"):
        idx.add(good.astype(np.float64))
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        idx.add(np.zeros((3, 5), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        idx.add(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        idx.add(np.zeros((3, 8), np.uint8)[:, ::2])
    with pytest.raises(ValueError, match="padding bits"):
        idx.add(np.full((1, 4), 0xFF, np.uint8))
    with pytest.raises(ValueError, match="one id per code"):
        idx.add(good, ids=[1, 2])
    with pytest.raises(ValueError, match=">= 0"):
        idx.add(good, ids=[1, -2, 3])
    with pytest.raises(ValueError, match="duplicate id 1"):
        idx.add(good, ids=[1, 2, 1])
    with pytest.raises(TypeError, match="integers"):
        idx.add(good, ids=[1.0, 2.0, 3.0])
    idx.add(good)
    with pytest.raises(ValueError, match="k must be >= 1"):
        idx.search(good, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        idx.search(good, 2.5)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        idx.search(good, 1, threads=0)
    with pytest.raises(TypeError, match="queries must be uint8"):
        idx.search(good.tolist(), 1)
    with pytest.raises(TypeError, match="filter must be a boolean mask"):
        idx.search(good, 1, filter=[0.5])
    with pytest.raises(ValueError, match="metric"):
        bebr.Index(spec, metric="l2")
    with pytest.raises(TypeError, match="CodeSpec"):
        bebr.Index(12)
    with pytest.raises(TypeError, match="version must be a str"):
        idx.add(good, version=2.5)
    with pytest.raises(ValueError, match="remove"):
        idx.remove([77])
    # a single code as 1-d and list input of uint8 arrays are accepted
    assert idx.search(good[0], 1)[1].shape == (1, 1)
    assert len(idx) == 3


def test_strided_view_rows_are_refused_but_copies_work():
    spec = CodeSpec(64, 1)
    big = spec.pack(np.random.default_rng(0).integers(0, 2, (10, 64)))
    idx = bebr.HammingIndex(64)
    with pytest.raises(ValueError, match="C-contiguous"):
        idx.add(big[::2])
    idx.add(np.ascontiguousarray(big[::2]))
    assert len(idx) == 5


def test_threads_one_and_many_agree(level):
    rng = np.random.default_rng(3)
    spec = CodeSpec(96, 3)
    idx = bebr.Index(spec)
    codes = random_codes(rng, spec, 5000)
    idx.add(codes)
    for nq in (1, 3, 40):
        q = random_codes(rng, spec, nq)
        a = idx.search(q, 11, threads=1)
        for t in (2, 4, 7):
            b = idx.search(q, 11, threads=t)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])


def test_search_releases_gil_and_runs_concurrently():
    rng = np.random.default_rng(4)
    spec = CodeSpec(128, 2)
    idx = bebr.Index(spec)
    codes = random_codes(rng, spec, 20000)
    idx.add(codes)
    q = random_codes(rng, spec, 4)
    want = idx.search(q, 5, threads=1)
    out, errors = [], []

    def worker():
        try:
            for _ in range(5):
                out.append(idx.search(q, 5, threads=1))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=worker) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and len(out) == 15
    for s, i in out:
        np.testing.assert_array_equal(i, want[1])
