"""Every SIMD level against the numpy reference (bit-exact for ip / Hamming) on awkward sizes."""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bebr
from bebr import CodeSpec, reference
from bebr.codes import max_query_bits
from bebr import _C

LEVELS = bebr.simd_levels()
AWKWARD_DIMS = [1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 256]


def random_codes(rng, spec, n):
    return spec.pack(rng.integers(0, spec.n_levels, (n, spec.dim)))


def test_levels_listed_and_active():
    assert LEVELS[0] == "scalar"
    assert bebr.simd_level() in LEVELS
    assert set(LEVELS) <= {"scalar", "avx2", "avx512", "amx"}
    assert LEVELS == [lv for lv in ("scalar", "avx2", "avx512", "amx") if lv in LEVELS]


def test_unknown_level_refused():
    with pytest.raises(ValueError, match="not available"):
        bebr.set_simd_level("sse9")
    with pytest.raises(TypeError, match="str"):
        bebr.set_simd_level(3)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_awkward_dims_exact(level, bits):
    rng = np.random.default_rng(bits)
    for dim in AWKWARD_DIMS:
        spec = CodeSpec(dim, bits)
        n = int(rng.integers(60, 200))  # crosses the 64-slot block boundary
        codes = random_codes(rng, spec, n)
        queries = random_codes(rng, spec, 5)
        idx = bebr.Index(spec)
        idx.add(codes)
        got = idx.search(queries, 7, threads=1)
        want = reference.search_codes(spec, queries, codes, np.arange(n), 7)
        np.testing.assert_array_equal(got[1], want[1], err_msg=f"dim={dim} bits={bits}")
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"dim={dim} bits={bits}")


def test_extreme_values_exact(level):
    """All-max / all-min levels reach the largest |scores|: no u8/u16 overflow anywhere."""
    for bits in (1, 2, 3, 4):
        for dim in (8, 255, 256, 2049, 4100):  # > 256 byte rows per plane -> u16 flushes
            spec = CodeSpec(dim, bits)
            top = spec.n_levels - 1
            levels = np.array([np.full(dim, top), np.zeros(dim, int), np.arange(dim) % spec.n_levels])
            codes = spec.pack(levels)
            idx = bebr.Index(spec)
            idx.add(codes)
            got = idx.search(codes, 3, threads=1)
            want = reference.search_codes(spec, codes, codes, np.arange(3), 3)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])


def search_every_level(spec, codes, ids, queries, k, threads, gone=(), allowed=None,
                       query_bits=None, versions=None, version_queries=None,
                       version_calibration=None):
    """Search an index of (codes, ids) minus `gone` at every SIMD level and both metrics
    (query codes at `query_bits`, default the index's bits; with `versions`, row i is added
    as version versions[i], and `version_queries` / `version_calibration` go to search);
    assert every level is bit-identical to scalar (same float ops everywhere) and return the
    results keyed by (level, metric)."""
    vers = np.zeros(len(ids), dtype=np.int64) if versions is None else np.asarray(versions)
    before = bebr.simd_level()
    results = {}
    try:
        for lvl in LEVELS:
            bebr.set_simd_level(lvl)
            for metric in ("ip", "cosine"):
                idx = bebr.Index(spec, metric)
                for v in np.unique(vers):
                    idx.add(codes[vers == v], ids[vers == v], version=int(v))
                if len(gone):
                    idx.remove(gone)
                results[lvl, metric] = idx.search(queries, k, threads=threads, filter=allowed,
                                                  query_bits=query_bits,
                                                  version_queries=version_queries,
                                                  version_calibration=version_calibration)
    finally:
        bebr.set_simd_level(before)
    for lvl in LEVELS:
        for metric in ("ip", "cosine"):
            np.testing.assert_array_equal(results[lvl, metric][0], results["scalar", metric][0])
            np.testing.assert_array_equal(results[lvl, metric][1], results["scalar", metric][1])
    return results


@settings(max_examples=40, deadline=None)
@given(dim=st.integers(1, 140), bits=st.integers(1, 4), n=st.integers(0, 200),
       nq=st.integers(1, 9), k=st.integers(1, 30), seed=st.integers(0, 2**32 - 1))
def test_levels_agree_with_scalar(dim, bits, n, nq, k, seed):
    rng = np.random.default_rng(seed)
    spec = CodeSpec(dim, bits)
    codes = random_codes(rng, spec, n)
    queries = random_codes(rng, spec, nq)
    ids = rng.permutation(3 * n + 5)[:n]
    search_every_level(spec, codes, ids, queries, k, threads=2)


@settings(max_examples=25, deadline=None)
@given(dim=st.sampled_from([1, 7, 8, 50, 63, 64, 65, 100, 129, 256]),
       bits=st.integers(_C.BATCH_MIN_BITS, 4),
       n=st.integers(0, 300), nq=st.integers(_C.BATCH_MIN_QUERIES, 140), k=st.integers(1, 20),
       removed=st.integers(0, 4), allow=st.booleans(), threads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**32 - 1))
def test_query_batches_agree_with_scalar(dim, bits, n, nq, k, removed, allow, threads, seed):
    """Searches of many queries take a level's batch kernel (AMX tiles) where it has one:
    bit-identical to the scalar kernel and exact against the numpy reference (ip), with
    removals, filters, both metrics, nq not a multiple of the 32-query tile pair, and
    threads splitting the database or the queries."""
    rng = np.random.default_rng(seed)
    spec = CodeSpec(dim, bits)
    codes = random_codes(rng, spec, n)
    queries = random_codes(rng, spec, nq)
    ids = rng.permutation(2 * n + 5)[:n]
    gone = ids[::removed + 1][:max(0, n // 3)] if removed else ids[:0]
    keep = np.setdiff1d(ids, gone)
    allowed = keep[rng.random(len(keep)) < 0.7] if allow else None
    results = search_every_level(spec, codes, ids, queries, k, threads=threads, gone=gone,
                                 allowed=allowed)
    pool = keep if allowed is None else allowed
    pos = {int(i): j for j, i in enumerate(ids)}
    sub = codes[[pos[int(i)] for i in pool]] if len(pool) else codes[:0]
    want = reference.search_codes(spec, queries, sub, pool, k)
    np.testing.assert_array_equal(results["scalar", "ip"][1], want[1])
    np.testing.assert_array_equal(results["scalar", "ip"][0], want[0])


@settings(max_examples=40, deadline=None)
@given(dim=st.sampled_from([1, 5, 8, 9, 50, 63, 64, 65, 130, 256]), bits=st.integers(1, 4),
       query_bits=st.integers(1, 7), n=st.integers(0, 250),
       nq=st.sampled_from([1, 3, 5, _C.BATCH_MIN_QUERIES, 70]), k=st.integers(1, 20),
       removed=st.booleans(), allow=st.booleans(), threads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**32 - 1))
def test_query_bits_match_reference(dim, bits, query_bits, n, nq, k, removed, allow, threads,
                                    seed):
    """Query codes with more or fewer bits than the stored codes (``query_bits``): every
    level (LUT, int8-dot, popcount and batch kernels) bit-identical to scalar, exact against
    the numpy reference for ip, within float tolerance for cosine."""
    query_bits = min(query_bits, max_query_bits(bits))  # 4 over 1-2-bit codes, 7 over 3-4
    rng = np.random.default_rng(seed)
    spec, qspec = CodeSpec(dim, bits), CodeSpec(dim, query_bits)
    codes = random_codes(rng, spec, n)
    if n > 4:
        codes[rng.integers(0, n, n // 4)] = codes[0]  # exact ties
    queries = random_codes(rng, qspec, nq)
    ids = rng.permutation(2 * n + 5)[:n]
    gone = ids[::3] if removed else ids[:0]
    keep = np.setdiff1d(ids, gone)
    allowed = keep[rng.random(len(keep)) < 0.7] if allow else None
    results = search_every_level(spec, codes, ids, queries, k, threads=threads, gone=gone,
                                 allowed=allowed, query_bits=query_bits)
    pool = keep if allowed is None else allowed
    pos = {int(i): j for j, i in enumerate(ids)}
    sub = codes[[pos[int(i)] for i in pool]] if len(pool) else codes[:0]
    want = reference.search_codes(spec, queries, sub, pool, k, query_spec=qspec)
    np.testing.assert_array_equal(results["scalar", "ip"][1], want[1])
    np.testing.assert_array_equal(results["scalar", "ip"][0], want[0])
    want_cos = reference.search_codes(spec, queries, sub, pool, k, "cosine", query_spec=qspec)
    np.testing.assert_allclose(results["scalar", "cosine"][0], want_cos[0], rtol=1e-5,
                               atol=1e-6)


@settings(max_examples=12, deadline=None)
@given(dim=st.sampled_from([9, 50, 192, 1500]), bits=st.sampled_from([1, 2, 4]),
       query_bits=st.integers(1, 7), k=st.sampled_from([1, 10]), nq=st.sampled_from([1, 2, 5]),
       removed=st.booleans(), allow=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_few_queries_over_many_blocks_match_reference(dim, bits, query_bits, k, nq, removed,
                                                      allow, seed):
    """One to five queries over thousands of items (the single-query path, where kernels
    skip whole blocks against the heap threshold; dim 1500 at 4-bit queries takes the int32
    sums): every level bit-identical to scalar and exact against the numpy reference."""
    query_bits = min(query_bits, max_query_bits(bits))
    rng = np.random.default_rng(seed)
    spec, qspec = CodeSpec(dim, bits), CodeSpec(dim, query_bits)
    n = 400 if dim > 1000 else 3000
    codes = random_codes(rng, spec, n)
    codes[rng.integers(0, n, 20)] = codes[1]  # exact ties across blocks
    queries = random_codes(rng, qspec, nq)
    ids = rng.permutation(2 * n)[:n]
    gone = ids[::7] if removed else ids[:0]
    keep = np.setdiff1d(ids, gone)
    allowed = keep[rng.random(len(keep)) < 0.5] if allow else None
    results = search_every_level(spec, codes, ids, queries, k, threads=1, gone=gone,
                                 allowed=allowed, query_bits=query_bits)
    pool = keep if allowed is None else allowed
    pos = {int(i): j for j, i in enumerate(ids)}
    sub = codes[[pos[int(i)] for i in pool]]
    want = reference.search_codes(spec, queries, sub, pool, k, query_spec=qspec)
    np.testing.assert_array_equal(results["scalar", "ip"][1], want[1])
    np.testing.assert_array_equal(results["scalar", "ip"][0], want[0])
    want_cos = reference.search_codes(spec, queries, sub, pool, k, "cosine", query_spec=qspec)
    np.testing.assert_allclose(results["scalar", "cosine"][0], want_cos[0], rtol=1e-5,
                               atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(dim=st.sampled_from([1, 9, 50, 64, 130]), bits=st.integers(1, 4),
       query_bits=st.integers(1, 4), n=st.integers(0, 250), nver=st.integers(1, 3),
       nq=st.sampled_from([1, 3, 6, _C.BATCH_MIN_QUERIES + 3]), k=st.integers(1, 25),
       removed=st.booleans(), allow=st.booleans(), threads=st.sampled_from([1, 2]),
       calibrate=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_version_queries_match_reference(dim, bits, query_bits, n, nver, nq, k, removed, allow,
                                         threads, calibrate, seed):
    """Per-version query codes: items of version v scored with version_queries[v], the rest
    with the main queries, one merged top-k per query, optionally calibrated per version;
    every level bit-identical to scalar, exact (ip) / within float tolerance (cosine) against
    the numpy reference. Calibrations are powers of two and multiples of the ip score step,
    so that ip stays exact in float32."""
    rng = np.random.default_rng(seed)
    spec, qspec = CodeSpec(dim, bits), CodeSpec(dim, query_bits)
    step = 1.0 / (qspec.scale * spec.scale)  # ip score of one integer key unit
    cal = ({v: (float(2.0 ** rng.integers(-2, 3)), float(rng.integers(-40, 41)) * step)
            for v in range(nver) if rng.random() < 0.8} if calibrate else None)
    codes = random_codes(rng, spec, n)
    if n > 4:
        codes[rng.integers(0, n, n // 4)] = codes[0]  # exact ties
    ids = rng.permutation(2 * n + 5)[:n]
    vers = rng.integers(0, nver + 1, n)               # version nver has no version queries
    queries = random_codes(rng, qspec, nq)
    vq = {v: random_codes(rng, qspec, nq) for v in range(nver)}
    gone = ids[::3] if removed else ids[:0]
    keep = np.isin(ids, gone, invert=True)
    allowed = ids[keep][rng.random(keep.sum()) < 0.7] if allow else None
    got = search_every_level(spec, codes, ids, queries, k, threads, gone=gone, allowed=allowed,
                             query_bits=query_bits, versions=vers, version_queries=vq,
                             version_calibration=cal)
    sel = keep if allowed is None else np.isin(ids, allowed)
    want = reference.search_versions(spec, queries, codes[sel], ids[sel], vers[sel], k, "ip",
                                     vq, qspec, cal)
    np.testing.assert_array_equal(got["scalar", "ip"][1], want[1])
    np.testing.assert_array_equal(got["scalar", "ip"][0], want[0])
    want_c = reference.search_versions(spec, queries, codes[sel], ids[sel], vers[sel], k,
                                       "cosine", vq, qspec, cal)
    np.testing.assert_allclose(got["scalar", "cosine"][0], want_c[0], rtol=1e-5, atol=1e-6)


def test_version_queries_bad_input():
    spec = CodeSpec(20, 2)
    idx = bebr.Index(spec)
    rng = np.random.default_rng(0)
    idx.add(random_codes(rng, spec, 10), version=1)
    q = random_codes(rng, spec, 3)
    with pytest.raises(TypeError, match="mapping"):
        idx.search(q, 2, version_queries=[q])
    with pytest.raises(ValueError, match="one row per query"):
        idx.search(q, 2, version_queries={1: q[:2]})
    with pytest.raises(ValueError, match=r"shape \(n, 6\)"):
        idx.search(q, 2, version_queries={1: random_codes(rng, CodeSpec(20, 3), 3)})
    with pytest.raises(TypeError, match="version must be a str"):
        idx.search(q, 2, version_queries={1.5: q})
    with pytest.raises(ValueError, match="version_queries has no version 2"):
        idx.search(q, 2, version_queries={1: q}, version_calibration={2: (1.0, 0.0)})
    for bad in ((0.0, 0.0), (-1.0, 0.0), (1.0, float("nan")), (float("inf"), 0.0)):
        with pytest.raises(ValueError, match="finite scale > 0"):
            idx.search(q, 2, version_queries={1: q}, version_calibration={1: bad})
    with pytest.raises(TypeError, match="pair of numbers"):
        idx.search(q, 2, version_queries={1: q}, version_calibration={1: 2.0})
    with pytest.raises(TypeError, match="mapping"):
        idx.search(q, 2, version_queries={1: q}, version_calibration=[(1.0, 0.0)])
    # a calibration is applied to the scores it returns
    s1 = idx.search(q, 3, version_queries={1: q})[0]
    s2 = idx.search(q, 3, version_queries={1: q}, version_calibration={1: (2.0, 0.5)})[0]
    np.testing.assert_allclose(s2, 2 * s1 + 0.5, rtol=1e-6)
    # version queries replace the main queries for that version only
    s, i = idx.search(q, 10, version_queries={1: q[::-1].copy()})
    np.testing.assert_array_equal(i, idx.search(q[::-1].copy(), 10)[1])
    np.testing.assert_array_equal(idx.search(q, 10, version_queries={7: q[:1].repeat(3, 0)})[1],
                                  idx.search(q, 10)[1])


def test_query_bits_bad_input():
    spec = CodeSpec(20, 2)
    idx = bebr.Index(spec)
    idx.add(random_codes(np.random.default_rng(0), spec, 10))
    q4 = random_codes(np.random.default_rng(1), CodeSpec(20, 4), 2)
    with pytest.raises(ValueError, match=r"shape \(n, 6\)"):
        idx.search(q4, 3)  # 4-bit queries without query_bits: wrong code width
    with pytest.raises(ValueError, match=r"shape \(n, 9\)"):
        idx.search(q4, 3, query_bits=3)
    for bad in (0, 5):
        with pytest.raises(ValueError, match="query_bits must be in"):
            idx.search(q4, 3, query_bits=bad)
    idx3 = bebr.Index(CodeSpec(20, 3))
    idx3.add(random_codes(np.random.default_rng(2), CodeSpec(20, 3), 5))
    q7 = random_codes(np.random.default_rng(3), CodeSpec(20, 7), 2)
    want7 = reference.search_codes(CodeSpec(20, 3), q7, idx3.get_codes(idx3.ids()), idx3.ids(),
                                   3, query_spec=CodeSpec(20, 7))
    np.testing.assert_array_equal(idx3.search(q7, 3, query_bits=7)[0], want7[0])
    with pytest.raises(ValueError, match=r"\[1, 7\] over 3-bit"):
        idx3.search(q7, 3, query_bits=8)
    with pytest.raises(ValueError, match="bits"):
        bebr.Index(CodeSpec(20, 5))  # query-only precision: not storable
    with pytest.raises(TypeError, match="query_bits must be an int"):
        idx.search(q4, 3, query_bits=2.0)
    s, i = idx.search(q4, 3, query_bits=4)
    want = reference.search_codes(spec, q4, idx.get_codes(idx.ids()), idx.ids(), 3,
                                  query_spec=CodeSpec(20, 4))
    np.testing.assert_array_equal(i, want[1])
    np.testing.assert_array_equal(s, want[0])


def test_hamming_every_level(level):
    rng = np.random.default_rng(5)
    for nbits in (1, 7, 8, 64, 65, 256):
        spec = CodeSpec(nbits, 1)
        codes = random_codes(rng, spec, 150)
        queries = random_codes(rng, spec, 4)
        h = bebr.HammingIndex(nbits)
        h.add(codes)
        got = h.search(queries, 9, threads=1)
        want = reference.hamming_search(queries, codes, np.arange(150), 9)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_read_bandwidth_probe(level):
    buf = np.arange(1 << 16, dtype=np.uint64).view(np.uint8)
    secs, checksum = _C.read_bandwidth(buf, 2, 2)
    assert len(secs) == 2 and all(s > 0 for s in secs)
    assert checksum != 0


def test_env_var_forces_level():
    for lvl in LEVELS:
        out = subprocess.run(
            [sys.executable, "-c", "import bebr; print(bebr.simd_level())"],
            env=dict(os.environ, BEBR_SIMD=lvl), capture_output=True, text=True, check=True)
        assert out.stdout.strip() == lvl
    bad = subprocess.run([sys.executable, "-c", "import bebr"],
                         env=dict(os.environ, BEBR_SIMD="nope"), capture_output=True, text=True)
    assert bad.returncode != 0 and "not available" in bad.stderr
