"""IVFIndex against the flat Index as the oracle (nprobe = nlist is the flat scan)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bebr
from bebr import CodeSpec, Index, IVFIndex
from bebr.fileio import CorruptFileError
from bebr.index import MAX_ID
from bebr.ivf import Refine


def clustered_codes(spec, n, rng, nclusters=8):
    """Codes of a Gaussian mixture, so that lists differ."""
    centers = rng.standard_normal((nclusters, spec.dim))
    x = centers[rng.integers(0, nclusters, n)] + 0.6 * rng.standard_normal((n, spec.dim))
    levels = np.clip(np.round((x + 2) / 4 * (spec.n_levels - 1)), 0, spec.n_levels - 1)
    return spec.pack(levels.astype(np.uint8))


def random_queries(spec, qbits, nq, rng):
    qs = CodeSpec(spec.dim, qbits)
    return qs.pack(rng.integers(0, 2**qbits, (nq, spec.dim)).astype(np.uint8))


def pair(spec, metric, nlist, codes, ids=None, rng=None, version=0, spill=None):
    ivf = IVFIndex(spec, nlist, metric, spill_lambda=spill)
    ivf.train(codes, seed=0)
    flat = Index(spec, metric)
    ivf.add(codes, ids, version=version)
    flat.add(codes, ids, version=version)
    return ivf, flat


def same(a, b):
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("spill", [None, 1.0])
@pytest.mark.parametrize("bits,metric,dim", [(1, "ip", 33), (2, "cosine", 64), (2, "ip", 17),
                                             (3, "cosine", 31), (4, "ip", 9)])
def test_full_probe_equals_flat_at_every_level(level, bits, metric, dim, spill):
    rng = np.random.default_rng(bits * 100 + dim)
    spec = CodeSpec(dim, bits)
    codes = clustered_codes(spec, 700, rng)
    ivf, flat = pair(spec, metric, 12, codes, spill=spill)
    assert len(ivf) == 700 and ivf.list_sizes().sum() == (700 if spill is None else 1400)
    assert (ivf.list_sizes() > 0).sum() > 1
    for qbits in (bits, 4 if bits <= 2 else 7):
        q = random_queries(spec, qbits, 9, rng)
        for k in (1, 10, 800):  # 800 > n: padded tail
            same(ivf.search(q, k, query_bits=qbits, nprobe=12, threads=1),
                 flat.search(q, k, query_bits=qbits, threads=1))
            same(ivf.search(q, k, query_bits=qbits, nprobe=99, threads=1),
                 flat.search(q, k, query_bits=qbits, threads=1))


@pytest.mark.parametrize("nlist", [7, 64])
def test_probe_order_matches_numpy_and_batches_match_single_queries(nlist):
    """probe(): the centroids by the inner product with the query's code values, best first,
    ties to the smaller list (numpy reference; every sum is exact in float32 here: small
    integers times the centroids' values); a batch (probed 16 at a time) returns what each
    query returns alone."""
    rng = np.random.default_rng(5)
    spec = CodeSpec(48, 2)
    codes = clustered_codes(spec, 3000, rng)
    ivf, _ = pair(spec, "cosine", nlist, codes)
    q = random_queries(spec, 4, 37, rng)
    q[1] = q[0]  # repeated queries in one batch
    qv = CodeSpec(48, 4).values(q).astype(np.float64)
    sc = qv @ ivf.centroids().astype(np.float64).T
    for nprobe in (1, 5, nlist):
        got = ivf.probe(q, nprobe, query_bits=4)
        want = np.array([sorted(range(nlist), key=lambda l: (-s[l], l))[:nprobe] for s in sc])
        # the reference sums in float64, the index in float32: compare where no two of the
        # scores around the cut are closer than the float32 rounding
        for r in range(q.shape[0]):
            srt = np.sort(sc[r])[::-1]
            if np.min(np.abs(np.diff(srt[:min(nprobe + 1, nlist)]))) > 1e-3 * np.abs(srt).max() or nprobe == 1:
                assert list(got[r]) == list(want[r]), (r, nprobe)
        s_all, i_all = ivf.search(q, 9, query_bits=4, nprobe=nprobe, threads=2)
        for r in range(q.shape[0]):
            s1, i1 = ivf.search(q[r:r + 1], 9, query_bits=4, nprobe=nprobe, threads=1)
            np.testing.assert_array_equal(i1[0], i_all[r])
            np.testing.assert_array_equal(s1[0], s_all[r])


def test_partial_probe_scans_only_probed_lists():
    rng = np.random.default_rng(1)
    spec = CodeSpec(48, 2)
    codes = clustered_codes(spec, 2000, rng)
    ivf, _ = pair(spec, "ip", 16, codes)
    q = random_queries(spec, 4, 20, rng)
    lists = ivf.probe(q, 3, query_bits=4)
    assign = ivf.assign(codes)
    s, i = ivf.search(q, 2000, query_bits=4, nprobe=3, threads=1)
    for r in range(q.shape[0]):
        allowed = np.flatnonzero(np.isin(assign, lists[r]))
        got = i[r][i[r] >= 0]
        assert set(got) == set(allowed)  # k >= n: every item of the probed lists, no other
    # oracle: the flat index restricted to those items
    flat = Index(spec, "ip")
    flat.add(codes)
    for r in range(3):
        allowed = np.flatnonzero(np.isin(assign, lists[r]))
        same(ivf.search(q[r:r + 1], 7, query_bits=4, nprobe=3, threads=1),
             flat.search(q[r:r + 1], 7, query_bits=4, filter=allowed, threads=1))


def test_threads_identical():
    rng = np.random.default_rng(2)
    spec = CodeSpec(96, 2)
    codes = clustered_codes(spec, 6000, rng)
    ivf, _ = pair(spec, "cosine", 32, codes)
    for nq in (1, 7, 64):
        q = random_queries(spec, 4, nq, rng)
        r1 = ivf.search(q, 10, query_bits=4, nprobe=8, threads=1)
        for t in (2, 4):
            same(ivf.search(q, 10, query_bits=4, nprobe=8, threads=t), r1)


def test_filters_match_flat():
    rng = np.random.default_rng(3)
    spec = CodeSpec(40, 2)
    ids = rng.choice(10_000, 900, replace=False)
    codes = clustered_codes(spec, 900, rng)
    ivf, flat = pair(spec, "ip", 10, codes, ids)
    q = random_queries(spec, 2, 6, rng)
    mask = np.zeros(12_000, bool)
    mask[ids[::3]] = True
    cases = [dict(filter=ids[:300]), dict(exclude=ids[::2]), dict(filter=mask),
             dict(exclude=mask), dict(filter=set(ids[:50].tolist()), exclude=ids[:10]),
             dict(filter=ids[:400], exclude=mask), dict(filter=[])]
    for kw in cases:
        same(ivf.search(q, 15, nprobe=10, threads=2, **kw), flat.search(q, 15, threads=2, **kw))


def test_mixed_versions_with_version_queries_and_calibration():
    rng = np.random.default_rng(4)
    spec = CodeSpec(32, 2)
    ivf = IVFIndex(spec, 8, "cosine")
    flat = Index(spec, "cosine")
    a, b = clustered_codes(spec, 500, rng), clustered_codes(spec, 400, rng)
    ivf.train(np.vstack([a, b]))
    for idx in (ivf, flat):
        idx.add(a, version="m-v1")
        idx.add(b, version="m-v2")
    assert ivf.versions() == flat.versions() == {"m-v1": 500, "m-v2": 400}
    np.testing.assert_array_equal(np.sort(ivf.ids_of_version("m-v2")), np.arange(500, 900))
    q = random_queries(spec, 4, 5, rng)
    vq = {"m-v2": random_queries(spec, 4, 5, rng)}
    cal = {"m-v2": (1.3, -0.05)}
    for kw in (dict(version_queries=vq), dict(version_queries=vq, version_calibration=cal)):
        same(ivf.search(q, 12, query_bits=4, nprobe=8, **kw), flat.search(q, 12, query_bits=4, **kw))
    # partial probe: version 2's items are found through its own query codes' lists
    s, i = ivf.search(q, 900, query_bits=4, nprobe=1, version_queries=vq)
    assign = ivf.assign(np.vstack([a, b]))
    l_main = ivf.probe(q, 1, query_bits=4)[:, 0]
    l_v2 = ivf.probe(vq["m-v2"], 1, query_bits=4)[:, 0]
    for r in range(5):
        want = set(np.flatnonzero((assign[:500] == l_main[r]))) | \
            set(500 + np.flatnonzero(assign[500:] == l_v2[r]))
        assert set(i[r][i[r] >= 0]) == want


def test_upsert_moves_item_and_remove():
    rng = np.random.default_rng(5)
    spec = CodeSpec(24, 1)
    codes = clustered_codes(spec, 300, rng)
    ivf, flat = pair(spec, "ip", 6, codes)
    new = clustered_codes(spec, 50, rng)
    ids = np.arange(280, 330)  # 20 replaced, 30 new
    ivf.upsert(new, ids, version=3)
    flat.upsert(new, ids, version=3)
    ivf.remove([0, 5, 9])
    flat.remove([0, 5, 9])
    assert len(ivf) == len(flat) == 327
    np.testing.assert_array_equal(ivf.get_codes([300, 281]), flat.get_codes([300, 281]))
    assert 0 not in ivf and 281 in ivf
    q = random_queries(spec, 1, 4, rng)
    same(ivf.search(q, 20, nprobe=6), flat.search(q, 20))
    with pytest.raises(ValueError, match="not in the index"):
        ivf.remove([0])
    with pytest.raises(ValueError, match="already in the index"):
        ivf.add(codes[:1], [1])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["add", "upsert", "remove", "search", "save",
                                               "compact", "lookup"]),
                              st.integers(0, 2**31)), min_size=1, max_size=14),
       bits=st.sampled_from([1, 2, 3]), metric=st.sampled_from(["ip", "cosine"]),
       wide=st.booleans(), spill=st.sampled_from([None, 0.0, 1.5]))
def test_interleavings_match_flat(tmp_path, ops, bits, metric, wide, spill):
    # wide: some ids at and past 2**32 - 2 (the index switches from 4-byte to 8-byte ids)
    pool = np.arange(150) if not wide else np.concatenate([np.arange(140), 2**32 - 3 + np.arange(10)])
    spec = CodeSpec(20, bits)
    rng = np.random.default_rng(0)
    ivf = IVFIndex(spec, 5, metric, spill_lambda=spill)
    ivf.train(clustered_codes(spec, 200, rng))
    flat = Index(spec, metric)
    for step, (op, seed) in enumerate(ops):
        r = np.random.default_rng(seed)
        if op in ("add", "upsert"):
            n = int(r.integers(1, 40))
            c = clustered_codes(spec, n, r)
            ids = r.choice(pool, n, replace=False)
            v = int(r.integers(0, 3))
            if op == "add":
                ids = ids[~np.isin(ids, flat.ids())]
                c = c[:ids.size]
                ivf.add(c, ids, version=v)
                flat.add(c, ids, version=v)
            else:
                ivf.upsert(c, ids, version=v)
                flat.upsert(c, ids, version=v)
        elif op == "remove":
            live = flat.ids()
            if live.size:
                rm = r.choice(live, int(r.integers(1, live.size + 1)), replace=False)
                ivf.remove(rm)
                flat.remove(rm)
        elif op == "save":
            p = tmp_path / f"i{step}.bebr"
            ivf.save(p)
            ivf = IVFIndex.load(p, mmap=bool(seed % 2))
            assert ivf.spill_lambda == spill
        elif op == "compact":
            ivf.compact()
        elif op == "lookup":
            probe = r.choice(pool, 5, replace=False)
            assert [int(i) in ivf for i in probe] == [int(i) in flat for i in probe]
            live = flat.ids()
            if live.size:
                got = ivf.get_codes(live[:7])
                np.testing.assert_array_equal(got, flat.get_codes(live[:7]))
                assert ivf.versions_of(live[:7]) == flat.versions_of(live[:7])
        else:
            q = random_queries(spec, bits, 3, r)
            kk = int(r.integers(1, 30))
            same(ivf.search(q, kk, nprobe=5, threads=1 + seed % 2), flat.search(q, kk))
            vq = {1: random_queries(spec, bits, 3, r)}
            same(ivf.search(q, kk, nprobe=5, version_queries=vq),
                 flat.search(q, kk, version_queries=vq))
        assert len(ivf) == len(flat)
        assert ivf.list_sizes().sum() == len(flat) * (1 if spill is None else 2)
        assert ivf.versions() == flat.versions()
        np.testing.assert_array_equal(np.sort(ivf.ids()), np.sort(flat.ids()))
    q = random_queries(spec, bits, 4, rng)
    same(ivf.search(q, 11, nprobe=5), flat.search(q, 11))


def test_save_load_mmap_roundtrip(tmp_path):
    rng = np.random.default_rng(6)
    spec = CodeSpec(50, 2)
    codes = clustered_codes(spec, 1000, rng)
    ivf, _ = pair(spec, "cosine", 9, codes, version="v-a")
    ivf.register_version("v-b", lineage=["v-a"])
    ivf.remove(np.arange(0, 1000, 7))
    q = random_queries(spec, 4, 5, rng)
    want = ivf.search(q, 10, query_bits=4, nprobe=3)
    p = tmp_path / "ivf.bebr"
    ivf.save(p)
    for mm in (True, False):
        got = IVFIndex.load(p, mmap=mm)
        assert got.is_mmapped == mm and got.nlist == 9 and got.is_trained
        np.testing.assert_array_equal(got.centroids(), ivf.centroids())
        same(got.search(q, 10, query_bits=4, nprobe=3), want)
        np.testing.assert_array_equal(got.list_sizes(), ivf.list_sizes())
        assert got.versions() == {"v-a": 857}
        assert got.version_info()["v-b"].lineage == ("v-a",)
    got = IVFIndex.load(p, mmap=True)
    got.add(codes[:5], [5000 + i for i in range(5)])  # copy-on-write of the touched lists
    assert len(got) == len(ivf) + 5 and 5004 in got
    same(IVFIndex.load(p).search(q, 10, query_bits=4, nprobe=3), want)  # file unchanged
    # an untrained empty index round-trips too
    e = IVFIndex(spec, 4)
    e.save(tmp_path / "e.bebr")
    assert not IVFIndex.load(tmp_path / "e.bebr").is_trained


def test_corrupt_and_truncated_files(tmp_path):
    rng = np.random.default_rng(7)
    spec = CodeSpec(16, 2)
    codes = clustered_codes(spec, 300, rng)
    ivf, flat = pair(spec, "ip", 4, codes)
    p = tmp_path / "a.bebr"
    ivf.save(p)
    raw = p.read_bytes()
    bad = bytearray(raw)
    bad[-100] ^= 0xFF
    (tmp_path / "b.bebr").write_bytes(bytes(bad))
    with pytest.raises(CorruptFileError, match="checksum"):
        IVFIndex.load(tmp_path / "b.bebr")
    (tmp_path / "c.bebr").write_bytes(raw[: len(raw) - 200])
    with pytest.raises(CorruptFileError, match="truncated"):
        IVFIndex.load(tmp_path / "c.bebr")
    flat.save(tmp_path / "f.bebr")
    with pytest.raises(CorruptFileError, match="IVFIndex"):
        IVFIndex.load(tmp_path / "f.bebr")
    with pytest.raises(CorruptFileError, match="Index"):
        Index.load(p)


def test_bad_input():
    rng = np.random.default_rng(8)
    spec = CodeSpec(16, 2)
    codes = clustered_codes(spec, 100, rng)
    ivf = IVFIndex(spec, 4)
    q = random_queries(spec, 2, 2, rng)
    with pytest.raises(ValueError, match="not trained"):
        ivf.search(q, 3)
    with pytest.raises(ValueError, match="not trained"):
        ivf.add(codes)
    with pytest.raises(ValueError, match="at least nlist=4"):
        ivf.train(codes[:3])
    ivf.train(codes)
    ivf.add(codes)
    with pytest.raises(ValueError, match="cannot train"):
        ivf.train(codes)
    with pytest.raises(ValueError, match="nprobe must be >= 1"):
        ivf.search(q, 3, nprobe=0)
    with pytest.raises(TypeError, match="nprobe must be an int"):
        ivf.search(q, 3, nprobe=2.0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        ivf.search(q, 0)
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        ivf.search(q[:, :3], 3)
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        ivf.add(np.zeros((2, 7), np.uint8))
    with pytest.raises(ValueError, match="nlist must be >= 1"):
        IVFIndex(spec, 0)
    with pytest.raises(ValueError, match="metric"):
        IVFIndex(spec, 4, "hamming")
    with pytest.raises(ValueError, match="centroids must have shape"):
        IVFIndex(spec, 4).set_centroids(np.zeros((3, 16), np.float32))


def test_refine_reranks_with_float_vectors(tmp_path):
    rng = np.random.default_rng(9)
    spec = CodeSpec(32, 1)
    x = rng.standard_normal((800, 32)).astype(np.float32)
    codes = spec.pack((x > 0).astype(np.uint8))
    ivf = IVFIndex(spec, 4, "ip")
    ivf.train(codes)
    ivf.add(codes)
    path = tmp_path / "x.npy"
    np.save(path, x)
    vec = np.load(path, mmap_mode="r")
    xq = rng.standard_normal((6, 32)).astype(np.float32)
    q = spec.pack((xq > 0).astype(np.uint8))
    s, i = ivf.search(q, 5, nprobe=4, refine=Refine(vec, xq, factor=1000))
    exact = np.argsort(-(xq @ x.T), axis=1)[:, :5]  # every item is a candidate: exact
    np.testing.assert_array_equal(i, exact)
    np.testing.assert_allclose(s, np.take_along_axis(xq @ x.T, exact, 1), rtol=1e-5)
    with pytest.raises(ValueError, match="columns"):
        ivf.search(q, 5, refine=Refine(vec[:, :10], xq))


def test_refine_with_sq8_codes():
    from bebr.ivf import SQ8

    rng = np.random.default_rng(10)
    spec = CodeSpec(24, 2)
    x = rng.standard_normal((500, 24)).astype(np.float32)
    codes = spec.pack(np.clip(np.floor((x + 2) / 4 * 4), 0, 3).astype(np.uint8))
    ivf = IVFIndex(spec, 4, "cosine")
    ivf.train(codes)
    ivf.add(codes)
    sq = SQ8.encode(x)
    assert np.abs(sq.decode(np.arange(500)) - x).max() <= sq.step.max() / 2 + 1e-6
    xq = rng.standard_normal((4, 24)).astype(np.float32)
    q = CodeSpec(24, 4).pack(np.clip(np.floor((xq + 2) / 4 * 16), 0, 15).astype(np.uint8))
    s, i = ivf.search(q, 6, query_bits=4, nprobe=4, refine=Refine(sq, xq, factor=100))
    d = sq.decode(np.arange(500))
    cos = (xq @ d.T) / np.linalg.norm(d, axis=1) / np.linalg.norm(xq, axis=1)[:, None]
    np.testing.assert_array_equal(i, np.argsort(-cos, axis=1, kind="stable")[:, :6])
    np.testing.assert_allclose(s, np.take_along_axis(cos, i, 1), rtol=1e-5, atol=1e-6)


def test_id_table_is_built_on_first_lookup_and_memory_is_counted(tmp_path):
    rng = np.random.default_rng(11)
    spec = CodeSpec(64, 2)
    codes = clustered_codes(spec, 3000, rng)
    ivf = IVFIndex(spec, 8, "cosine")
    ivf.train(codes)
    ivf.add(codes[:2000], version="m-1")
    ivf.add(codes[2000:], np.arange(5000, 6000))  # ids above next_id: no lookup needed
    q = random_queries(spec, 4, 3, rng)
    ivf.search(q, 5, query_bits=4, nprobe=3)
    assert not ivf.id_table_built
    b = ivf.memory_breakdown()
    assert sum(b.values()) == ivf.memory_bytes() and b["id_table"] == 0
    assert b["ids"] == 4 * 3000  # 4-byte ids while every id is below 2**32 - 1
    assert b["versions"] <= 16 * 2 * 8  # one run per (list, add of another version)
    assert b["norms"] >= 4 * 3000 and b["codes"] >= 3000 * spec.code_bytes
    with pytest.raises(ValueError, match="already in the index"):
        ivf.add(codes[:1], [3])  # an id below next_id is looked up
    assert ivf.id_table_built
    assert 0 < ivf.memory_breakdown()["id_table"] <= 16 * 3000
    ivf.save(tmp_path / "t.bebr")
    got = IVFIndex.load(tmp_path / "t.bebr")  # a loaded index starts without the table
    assert not got.id_table_built and got.memory_breakdown()["codes"] == 0  # mapped codes
    same(got.search(q, 5, query_bits=4, nprobe=3), ivf.search(q, 5, query_bits=4, nprobe=3))
    assert 5999 in got and 6000 not in got and -1 not in got and got.id_table_built


def test_wide_ids_switch_keeps_results(tmp_path):
    rng = np.random.default_rng(12)
    spec = CodeSpec(32, 2)
    codes = clustered_codes(spec, 400, rng)
    ivf, flat = pair(spec, "ip", 6, codes)
    big = np.array([2**32 - 2, 2**32 - 1, 2**40, MAX_ID], np.int64)
    extra = clustered_codes(spec, 4, rng)
    ivf.add(extra, big)
    flat.add(extra, big)
    assert 8 * 404 <= ivf.memory_breakdown()["ids"] <= 8 * 404 * 5 // 4  # 8-byte ids now
    q = random_queries(spec, 2, 5, rng)
    same(ivf.search(q, 30, nprobe=6), flat.search(q, 30))
    ivf.remove(big[1:3])
    flat.remove(big[1:3])
    ivf.save(tmp_path / "w.bebr")
    got = IVFIndex.load(tmp_path / "w.bebr")
    same(got.search(q, 30, nprobe=6), flat.search(q, 30))
    assert MAX_ID in got and 2**40 not in got


def test_refine_threads_and_float64_rows_match():
    from bebr.ivf import SQ8

    rng = np.random.default_rng(13)
    spec = CodeSpec(16, 2)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    codes = spec.pack(np.clip(np.floor((x + 2) / 4 * 4), 0, 3).astype(np.uint8))
    ivf = IVFIndex(spec, 8, "cosine")
    ivf.train(codes)
    ivf.add(codes)
    xq = rng.standard_normal((300, 16)).astype(np.float32)
    q = spec.pack(np.clip(np.floor((xq + 2) / 4 * 4), 0, 3).astype(np.uint8))
    sq = SQ8.encode(x)
    for rows in (sq, x):
        r1 = ivf.search(q, 7, nprobe=3, threads=1, refine=Refine(rows, xq, 5))
        r2 = ivf.search(q, 7, nprobe=3, threads=2, refine=Refine(rows, xq, 5))
        same(r1, r2)
    r64 = ivf.search(q, 7, nprobe=3, refine=Refine(x.astype(np.float64), xq, 5))
    r32 = ivf.search(q, 7, nprobe=3, refine=Refine(x, xq, 5))
    np.testing.assert_array_equal(r64[1], r32[1])
    np.testing.assert_allclose(r64[0], r32[0], rtol=1e-6)
    # a numpy oracle of the SQ8 cosine over the same candidates
    _, cand = ivf.search(q, 35, nprobe=3)
    d = sq.decode(np.arange(3000))
    cos = np.einsum("qcd,qd->qc", d[cand], xq) / np.linalg.norm(d[cand], axis=2) / \
        np.linalg.norm(xq, axis=1)[:, None]
    s, i = ivf.search(q, 7, nprobe=3, refine=Refine(sq, xq, 5))
    order = np.argsort(-cos, axis=1, kind="stable")[:, :7]
    np.testing.assert_allclose(s, np.take_along_axis(cos, order, 1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="indexed by id"):
        ivf.search(q, 7, nprobe=3, refine=Refine(x[:100], xq, 5))
    with pytest.raises(ValueError, match="indexed by id"):
        ivf.search(q, 7, nprobe=3, refine=Refine(SQ8.encode(x[:100]), xq, 5))
    with pytest.raises(ValueError, match="refine.queries"):
        ivf.search(q, 7, nprobe=3, refine=Refine(sq, xq[:5], 5))


def test_spilled_assignment_is_the_soar_second_list():
    rng = np.random.default_rng(14)
    spec = CodeSpec(24, 2)
    codes = clustered_codes(spec, 600, rng, nclusters=12)
    ivf = IVFIndex(spec, 10, "ip", spill_lambda=1.5)
    ivf.train(codes)
    ivf.add(codes)
    c = ivf.centroids().astype(np.float64)
    x = spec.values(codes) / float(spec.scale)
    s = x @ c.T
    first = np.argmax(s, axis=1)
    r = x - c[first]
    loss = ((x[:, None, :] - c[None]) ** 2).sum(2) + \
        1.5 * (np.einsum("nd,nld->nl", r, x[:, None, :] - c[None])) ** 2 / (r * r).sum(1, keepdims=True)
    loss[np.arange(600), first] = np.inf
    second = np.argmin(loss, axis=1)
    want = np.bincount(first, minlength=10) + np.bincount(second, minlength=10)
    # float32 sums in C++: a near-tie may flip; all but a few lists agree exactly
    assert np.abs(ivf.list_sizes() - want).sum() <= 6
    q = random_queries(spec, 4, 20, rng)
    flat = Index(spec, "ip")
    flat.add(codes)
    # probing one list finds the items of that list as primary or spilled copies, once each
    _, found = ivf.search(q, 600, query_bits=4, nprobe=1)
    lists = ivf.probe(q, 1, query_bits=4)[:, 0]
    for i in range(20):
        got = found[i][found[i] >= 0]
        assert got.size == np.unique(got).size
        assert set(got) <= set(np.flatnonzero((first == lists[i]) | (second == lists[i])))
    with pytest.raises(ValueError, match="spill_lambda"):
        IVFIndex(spec, 4, spill_lambda=-1.0)


def spread_norm_codes(spec, n, rng):
    """Clustered codes whose norms differ a lot (the share of outer levels varies per item), so
    that the cosine kernels' per-block norm bound skips blocks."""
    codes = clustered_codes(spec, n, rng)
    levels = spec.unpack(codes)
    outer = rng.uniform(0, 1, (n, 1)) < rng.uniform(0, 1, (n, spec.dim))
    inner = np.where(levels >= spec.n_levels // 2, spec.n_levels // 2, spec.n_levels // 2 - 1)
    return spec.pack(np.where(outer, levels, inner).astype(np.uint8))


@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_fast_path_matches_general_path(level, metric):
    from bebr.ivf import SQ8

    rng = np.random.default_rng(21)
    spec = CodeSpec(128, 2)  # no padding bits: plain query codes take the fast path
    codes = spread_norm_codes(spec, 3000, rng)
    ivf = IVFIndex(spec, 8, metric)
    ivf.train(codes, seed=0)
    ivf.add(codes)
    ivf.remove(np.arange(0, 3000, 7))  # dead slots inside blocks
    x = spec.values(codes).astype(np.float32) + rng.standard_normal((3000, 128)).astype(np.float32)
    sq = SQ8.encode(x)
    xq = rng.standard_normal((5, 128)).astype(np.float32)
    for qbits in (None, 4):
        q = random_queries(spec, qbits or 2, 5, rng)
        for k, nprobe, threads in ((1, 1, 1), (10, 3, 1), (50, 8, 2), (10, 20, None)):
            fast = ivf._search_plain(q, k, threads, qbits, nprobe, None)
            assert fast is not None
            same(fast, ivf.search(q, k, threads, query_bits=qbits, nprobe=nprobe))
            # an np.int64 k is not the plain form: the general path
            assert ivf._search_plain(q, np.int64(k), threads, qbits, nprobe, None) is None
            same(fast, ivf.search(q, np.int64(k), threads, query_bits=qbits, nprobe=nprobe))
            ref = Refine(sq, xq, 3)
            fast = ivf._search_plain(q, k, threads, qbits, nprobe, ref)
            assert fast is not None
            same(fast, ivf.search(q, k, threads, query_bits=qbits, nprobe=nprobe, refine=ref))
            general = Refine(sq, xq, np.int64(3))
            assert ivf._search_plain(q, k, threads, qbits, nprobe, general) is None
            same(fast, ivf.search(q, k, threads, query_bits=qbits, nprobe=nprobe, refine=general))
    # no queries; the general path's errors stay its own
    s, i = ivf.search(np.zeros((0, spec.code_bytes), np.uint8), 4, nprobe=2, refine=Refine(sq, xq[:0], 2))
    assert s.shape == i.shape == (0, 4)
    with pytest.raises(ValueError, match="refine.queries must have shape"):
        ivf.search(q, 4, query_bits=4, nprobe=2, refine=Refine(sq, xq[:2], 2))
    with pytest.raises(ValueError, match="rows must be indexed by id"):
        ivf.search(q, 4, query_bits=4, nprobe=8, refine=Refine(SQ8.encode(x[:10]), xq, 2))


@pytest.mark.parametrize("spill", [None, 1.0])
def test_cosine_block_norm_bound_keeps_flat_results(level, tmp_path, spill):
    """Cosine lists of several blocks with very different norms (the per-block norm bound
    skips blocks): nprobe = nlist is the flat index, bit for bit, after adds, removals,
    compaction and a save / mmap load."""
    rng = np.random.default_rng(22)
    spec = CodeSpec(128, 2)
    codes = spread_norm_codes(spec, 4000, rng)
    ivf, flat = pair(spec, "cosine", 6, codes[:3000], spill=spill)
    assert ivf.list_sizes().max() > 4 * 64
    q = random_queries(spec, 4, 7, rng)

    def check(a, b):
        for k in (1, 5, 40):
            same(a.search(q, k, query_bits=4, nprobe=6, threads=1), b.search(q, k, query_bits=4, threads=1))
            same(a.search(q, k, query_bits=4, nprobe=6, threads=2), b.search(q, k, query_bits=4, threads=1))

    check(ivf, flat)
    for idx in (ivf, flat):
        idx.add(codes[3000:])  # into partly filled blocks
        idx.remove(np.arange(0, 4000, 3))
    check(ivf, flat)
    ivf.compact()
    check(ivf, flat)
    ivf.save(tmp_path / "c.ivf")
    check(IVFIndex.load(tmp_path / "c.ivf", mmap=True), flat)
