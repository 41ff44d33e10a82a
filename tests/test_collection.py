"""bebr.Collection: create/add/upgrade/upsert/remove/search/save/open against a brute-force
numpy model of per-version scoring, bad input, damaged directories."""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import bebr
from bebr import CodeSpec, reference
from bebr.collection import (JOINT_WEIGHTS, MERGE_FLIP_WEIGHT, MERGE_STATES, MERGE_WINDOW,
                             Collection, MANIFEST_NAME, _fit_merge_table, _merge_curves,
                             _topk_scores, joint_query_codes)
from bebr.datasets import glove_words, l2_normalize
from bebr.fileio import CorruptFileError
from bebr.train import train_binarizer

N, DIM, BITS = 1500, 16, 2
KW = dict(epochs=1, progress=False, hidden=64, batch_size=512, seed=0, threads=1)
HEAD = dict(epochs=2, negatives=256, threads=1)


@pytest.fixture(scope="module")
def floats():
    _, g = glove_words(N)
    rng = np.random.default_rng(7)
    r = rng.standard_normal((50, 40)).astype(np.float32)
    x2 = l2_normalize(np.tanh(2.0 * g @ r) + 0.5 * rng.standard_normal((N, 40)).astype(
        np.float32))
    return g, x2


@pytest.fixture(scope="module")
def models(floats):
    g, x2 = floats
    return (train_binarizer(g, DIM, BITS, version="glove-v1", **KW),
            train_binarizer(x2, DIM, BITS, version="mixed-v2", **KW))


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory, floats, models):
    """A collection of v1 items 0..999 upgraded to v2 (head + own calibration fitted from a
    paired sample of 600 items), then items 0..299 re-encoded."""
    g, x2 = floats
    v1, v2 = models
    path = tmp_path_factory.mktemp("coll") / "c"
    c = Collection.create(path, v1, metric="ip")
    c.add(g[:1000])
    sample = np.arange(200, 800)
    report = c.upgrade(v2, x2[sample], sample, older={"glove-v1": g[sample]}, members=1,
                       progress=False, head_options=HEAD, joint_query=True)
    c.upsert(x2[:300], np.arange(300))
    c.save()
    return path, report


def _reference(coll, items, xq, older, k, floats_models):
    """Per-version brute-force scoring: each item scored by the query codes of its
    version's setting, calibrated, one top-k (bebr.reference)."""
    v1, v2 = floats_models
    spec = coll.spec
    qs = CodeSpec(spec.dim, coll.query_bits)
    ids = np.array(sorted(items), dtype=np.int64)
    if not len(ids):
        return (np.full((len(xq), k), -np.inf, np.float32), np.full((len(xq), k), -1))
    codes = np.stack([items[i][1] for i in ids])
    tags = np.array([0 if items[i][0] == "mixed-v2" else 1 for i in ids])
    own = v2.encode_query_codes(xq, qs.bits)
    if older is not None:
        w = coll._manifest["joint_weight"]["glove-v1"]
        if w:  # the joint query: unit(old projection) + w * unit(head direction)
            zo = v1.encode_query(older).astype(np.float64)
            zh = v2.to_encoder().encode_query(xq, target="glove-v1").astype(np.float64)
            z = (zo / np.linalg.norm(zo, axis=1, keepdims=True)
                 + w * zh / np.linalg.norm(zh, axis=1, keepdims=True))
            vq = qs.pack(qs.quantize_angle_reference(z.astype(np.float32)))
        else:
            vq = v1.encode_query_codes(older, qs.bits)
        cal = tuple(coll._manifest["own_calibration"]["glove-v1"])
        table = coll._manifest.get("merge_calibration", {}).get("glove-v1")
        if table:  # the entry for the share of re-encoded items (nearest state)
            r = float(np.mean(tags == 0))
            cal = tuple(min(table, key=lambda e: (abs(e[0] - r), e[0]))[1:])
    elif coll._manifest["query_memory"].get("glove-v1"):
        mem = coll._memory("glove-v1")
        z = _unit64(v2.to_encoder().encode_query(xq, target="glove-v1"))
        z = z + mem.weight * _memory_direction(mem, own, qs)
        vq = qs.pack(qs.quantize_angle_reference(z.astype(np.float32)))
        cal = mem.calibration
    else:
        vq = v2.encode_query_codes(xq, qs.bits, target="glove-v1")
        cal = v2.cross_calibration("glove-v1", coll.metric)
    return reference.search_versions(spec, own, codes, ids, tags, k, metric=coll.metric,
                                     version_queries={1: vq}, query_spec=qs,
                                     version_calibration={1: cal})


def _unit64(z):
    z = np.asarray(z, np.float64)
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def _memory_direction(mem, q_codes, qs):
    """Brute force of QueryMemory.direction: the k nearest memory rows by exact SDC cosine
    (bebr.reference, ties to the smaller row), softmax(score / tau) weights, the weighted
    mean of the rows' unit old code values, unit."""
    s, rows = reference.search_codes(mem.spec, q_codes, mem.new_codes,
                                     np.arange(len(mem)), mem.k, metric="cosine",
                                     query_spec=qs)
    w = np.exp((s.astype(np.float64) - s[:, :1]) / mem.tau)
    vals = _unit64(mem.spec.values(mem.old_codes))
    return _unit64(np.einsum("qk,qkd->qd", w, vals[rows]))


def _assert_same_topk(got, want):
    """Same top-k up to float32 rounding of calibrated scores (the kernel maps scores in
    float32, the reference in float64): scores within 1e-6 relative; ids equal except where
    two scores that close swapped."""
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    diff = got[1] != want[1]
    assert np.allclose(got[0][diff], want[0][diff], rtol=1e-6)
    for g, w in zip(got[1], want[1]):
        assert sorted(g[g >= 0]) == sorted(w[w >= 0]) or diff.any()


def test_upgrade_report(upgraded):
    _, report = upgraded
    assert report["version"] == "mixed-v2" and report["heads"]["glove-v1"]["rows"] == 600
    assert report["own_calibration"]["glove-v1"][0] > 0
    assert report["seconds"] > 0
    joint = report["joint_query"]["glove-v1"]
    assert joint["weight"] in JOINT_WEIGHTS
    assert set(joint["val_r10@10"]) == {str(w) for w in JOINT_WEIGHTS}
    best = max(joint["val_r10@10"].values())  # the chosen weight scored best on validation
    assert joint["val_r10@10"][str(joint["weight"])] == best


def test_upgrade_default_keeps_old_queries(tmp_path, floats, models):
    """Without joint_query the old items are searched with the old model's own query codes
    (weight 0), calibrated; a non-bool joint_query is refused."""
    g, x2 = floats
    v1, v2 = models
    import copy
    c = Collection.create(tmp_path / "c", v1, metric="cosine")
    c.add(g[:800])
    sample = np.arange(100, 700)
    with pytest.raises(TypeError, match="joint_query must be a bool"):
        c.upgrade(copy.deepcopy(v2), x2[sample], sample, joint_query=1, progress=False)
    rep = c.upgrade(copy.deepcopy(v2), x2[sample], sample, older={"glove-v1": g[sample]},
                    members=1, progress=False, head_options=HEAD)
    assert rep["joint_query"]["glove-v1"]["weight"] == 0.0
    assert set(rep["joint_query"]["glove-v1"]["val_r10@10"]) == {"0.0"}
    got = c.search(x2[900:910], 5, older={"glove-v1": g[900:910]})
    c2 = Collection.open(tmp_path / "c")
    np.testing.assert_array_equal(c2.search(x2[900:910], 5, older={"glove-v1": g[900:910]})[1],
                                  got[1])


def test_joint_query_codes(models, floats):
    """Weight 0 is the old model's own query codes; a weight moves the codes towards the
    head's direction (ever more of them differ as it grows)."""
    g, x2 = floats
    v1, v2 = [m for m in models]
    import copy
    v2 = copy.deepcopy(v2)
    from bebr.compat import train_cross_queries
    train_cross_queries(v2, x2[:600], v1.encode(g[:600]), "glove-v1", members=1,
                        progress=False, **HEAD)
    q0 = joint_query_codes(v1, g[900:950], v2, x2[900:950], "glove-v1", 0.0, 4)
    np.testing.assert_array_equal(q0, v1.encode_query_codes(g[900:950], 4))
    own_head = v2.encode_query_codes(x2[900:950], 4, target="glove-v1")
    diffs = [np.mean(np.any(joint_query_codes(v1, g[900:950], v2, x2[900:950], "glove-v1",
                                              w, 4) != q0, axis=1)) for w in (0.5, 2.0, 50.0)]
    assert diffs[0] <= diffs[1] <= diffs[2] and diffs[2] > 0
    far = joint_query_codes(v1, g[900:950], v2, x2[900:950], "glove-v1", 1e6, 4)
    assert np.mean(np.all(far == own_head, axis=1)) > 0.9  # a huge weight: the head's codes


def test_open_search_matches_reference(upgraded, floats, models):
    path, _ = upgraded
    g, x2 = floats
    c = Collection.open(path)
    assert c.current == "mixed-v2" and c.versions() == {"glove-v1": 700, "mixed-v2": 300}
    assert c.lineage() == ("glove-v1",) and c.index.is_mmapped
    v1, v2 = models
    items = {int(i): ("mixed-v2" if i < 300 else "glove-v1",
                      (v2.encode(x2[i:i + 1]) if i < 300 else v1.encode(g[i:i + 1]))[0])
             for i in range(1000)}
    q = np.arange(1000, 1040)
    for older in (None, g[q]):
        got = c.search(x2[q], 7, older=None if older is None else {"glove-v1": older})
        want = _reference(c, items, x2[q], older, 7, models)
        _assert_same_topk(got, want)
        assert (got[1] == want[1]).mean() > 0.98
    # threads and filters pass through
    a = c.search(x2[q], 5, threads=2, filter=np.arange(0, 1000, 2))
    assert np.all(a[1] % 2 == 0)


class CollectionMachine(RuleBasedStateMachine):
    """Random interleavings of add/upsert/remove/search/save/open on an upgraded collection,
    checked against the brute-force per-version model after every step."""

    fixture = None  # (path, floats, models), set by the test

    @initialize()
    def start(self):
        path, (g, x2), self.models = self.fixture
        self.g, self.x2 = g, x2
        self.dir = Path(tempfile.mkdtemp(prefix="bebr-coll-"))
        shutil.copytree(path, self.dir / "c")
        self.coll = Collection.open(self.dir / "c")
        v1, v2 = self.models
        self.items = {int(i): ("mixed-v2" if i < 300 else "glove-v1",
                               (v2.encode(x2[i:i + 1]) if i < 300 else v1.encode(g[i:i + 1]))[0])
                      for i in range(1000)}

    def teardown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(n=st.integers(1, 20))
    def add(self, n):
        start = max(self.items, default=-1) + 1
        if start + n > N:
            return
        ids = self.coll.add(self.x2[start:start + n])
        assert ids.tolist() == list(range(start, start + n))
        for i in ids:
            self.items[int(i)] = ("mixed-v2", self.models[1].encode(self.x2[i:i + 1])[0])

    @rule(data=st.data())
    def upsert(self, data):
        ids = data.draw(st.lists(st.integers(0, N - 1), min_size=1, max_size=15, unique=True))
        self.coll.upsert(self.x2[ids], ids)
        for i in ids:
            self.items[i] = ("mixed-v2", self.models[1].encode(self.x2[i:i + 1])[0])

    @rule(data=st.data())
    def downgrade_codes(self, data):
        """Codes made elsewhere by the old model (an offline job) come back in."""
        ids = data.draw(st.lists(st.integers(0, N - 1), min_size=1, max_size=5, unique=True))
        codes = self.models[0].encode(self.g[ids])
        self.coll.upsert_codes(codes, ids, version="glove-v1")
        for i, c in zip(ids, codes):
            self.items[i] = ("glove-v1", c)

    @rule(data=st.data())
    def remove(self, data):
        if not self.items:
            return
        ids = data.draw(st.lists(st.sampled_from(sorted(self.items)), min_size=1, max_size=10,
                                 unique=True))
        self.coll.remove(ids)
        for i in ids:
            del self.items[i]

    @rule()
    def save_and_open(self):
        self.coll.save()
        self.coll = Collection.open(self.dir / "c", mmap=True)

    @rule(older=st.booleans(), k=st.integers(1, 12))
    def search(self, older, k):
        q = np.arange(1400, 1410)
        has_old = any(v == "glove-v1" for v, _ in self.items.values())
        kw = {"older": {"glove-v1": self.g[q]}} if older else {}
        got = self.coll.search(self.x2[q], k, **kw)
        want = _reference(self.coll, self.items, self.x2[q],
                          self.g[q] if older and has_old else None, k, self.models)
        _assert_same_topk(got, want)

    @invariant()
    def counts(self):
        want = {"glove-v1": 0, "mixed-v2": 0}
        for v, _ in self.items.values():
            want[v] += 1
        assert self.coll.versions() == want


def test_collection_state_machine(upgraded, floats, models):
    CollectionMachine.fixture = (upgraded[0], floats, models)
    run = CollectionMachine.TestCase
    run.settings = settings(max_examples=12, stateful_step_count=10, deadline=None,
                            suppress_health_check=list(HealthCheck))
    run().runTest()


def test_backfill_order(upgraded, models):
    path, _ = upgraded
    c = Collection.open(path)
    old = set(c.index.ids_of_version("glove-v1").tolist())
    r = c.backfill_order(50, seed=3)
    assert len(r) == 50 and set(r.tolist()) <= old
    assert np.array_equal(r, c.backfill_order(50, seed=3))
    u = c.backfill_order(len(old), "uncertainty")
    assert sorted(u.tolist()) == sorted(old)
    inner = (np.abs(c.spec.values(c.index.get_codes(u))) < 1).mean(1)
    assert np.all(np.diff(inner) <= 0)  # least certain codes first
    assert len(c.backfill_order(10**9)) == len(old)
    with pytest.raises(ValueError, match="strategy must be"):
        c.backfill_order(5, "oldest")
    with pytest.raises(ValueError, match="n must be"):
        c.backfill_order(-1)


def test_retire_and_lineage(upgraded, floats, tmp_path):
    path, _ = upgraded
    g, x2 = floats
    shutil.copytree(path, tmp_path / "c")
    c = Collection.open(tmp_path / "c")
    with pytest.raises(ValueError, match="still has 700 items"):
        c.retire("glove-v1")
    with pytest.raises(ValueError, match="current version"):
        c.retire("mixed-v2")
    left = c.index.ids_of_version("glove-v1")
    c.upsert(x2[left], left)
    c.retire("glove-v1")
    back = Collection.open(tmp_path / "c")
    assert back.versions() == {"mixed-v2": 1000}
    assert back._manifest["query_memory"] == {}  # its memory went with it
    assert not list((tmp_path / "c").glob("memory-*.npz"))
    assert [d.name for d in (tmp_path / "c" / "models").iterdir()] == \
        [Path(back._entry("mixed-v2")["model"]).name]
    np.testing.assert_array_equal(back.search(x2[:3], 4)[1], c.search(x2[:3], 4)[1])


def test_version_without_head_refused(floats, models, tmp_path):
    g, x2 = floats
    v1, v2 = models
    c = Collection.create(tmp_path / "c", v1, metric="cosine")
    c.add(g[:100])
    # a v2 whose codes were never given a head into v1 (codes made elsewhere)
    fresh = train_binarizer(x2, DIM, BITS, version="v3-nohead", **KW)
    c._manifest["versions"].append({"version": "v3-nohead", "model": "models/x",
                                    "config_sha256": "", "lineage": []})
    c._manifest["current"] = "v3-nohead"
    c._models["v3-nohead"] = fresh
    with pytest.raises(ValueError, match=r"100 items of version 'glove-v1' cannot be searched"):
        c.search(x2[:2], 3)
    with pytest.raises(ValueError, match="no calibration for version 'glove-v1'"):
        c.search(x2[:2], 3, older={"glove-v1": g[:2]})


def test_bad_input(floats, models, upgraded, tmp_path):
    g, x2 = floats
    v1, v2 = models
    with pytest.raises(ValueError, match="metric must be"):
        Collection.create(tmp_path / "m", v1, metric="l2")
    with pytest.raises(ValueError, match=r"query_bits must be an int in \[1, 4\]"):
        Collection.create(tmp_path / "q", v1, query_bits=5)
    c = Collection.create(tmp_path / "c", v1)
    with pytest.raises(ValueError, match="not an empty directory"):
        Collection.create(tmp_path / "c", v1)
    with pytest.raises(ValueError, match=r"shape \(n, 50\)"):
        c.add(x2[:5])                                   # floats of the wrong model
    with pytest.raises(TypeError, match="real numeric"):
        c.add(np.array([["a"] * 50]))
    c.add(g[:300])
    with pytest.raises(ValueError, match="ids not in the collection, e.g. \\[5000"):
        c.upgrade(v2, x2[:2], np.array([5000, 1]))
    with pytest.raises(ValueError, match=r"ids not in the collection, e\.g\. \[5000, 7000\]$"):
        c.upgrade(v2, x2[:4], np.array([1, 5000, 2, 7000]))
    with pytest.raises(ValueError, match="one per row"):
        c.upgrade(v2, x2[:3], np.arange(2))
    with pytest.raises(ValueError, match="too few items"):
        c.upgrade(v2, x2[:50], np.arange(50), progress=False)
    with pytest.raises(ValueError, match="already in the collection"):
        c.upgrade(v1, g[:300], np.arange(300))
    other = train_binarizer(x2, 8, 2, version="v-8x2", **KW)
    with pytest.raises(ValueError, match="makes CodeSpec\\(dim=8"):
        c.upgrade(other, x2[:300], np.arange(300))
    with pytest.raises(ValueError, match="may not set"):
        c.upgrade(v2, x2[:300], np.arange(300), head_options={"members": 2})
    with pytest.raises(ValueError, match="not in the collection"):
        c.search(g[:2], 3, older={"nope": g[:2]})
    with pytest.raises(ValueError, match="that is the current version"):
        c.search(g[:2], 3, older={"glove-v1": g[:2]})
    with pytest.raises(ValueError, match="not in the collection"):
        c.add_codes(v1.encode(g[:2]), version="nope")
    assert c.versions() == {"glove-v1": 300}           # nothing changed by the refusals
    u = Collection.open(upgraded[0])
    with pytest.raises(ValueError, match=r"same 3 queries"):
        u.search(x2[:3], 3, older={"glove-v1": g[:2]})


def test_upgrade_time_limit_changes_nothing(floats, models, tmp_path):
    g, x2 = floats
    v1, v2 = models
    c = Collection.create(tmp_path / "c", v1)
    c.add(g[:400])
    with pytest.raises(TimeoutError, match="nothing changed"):
        c.upgrade(v2, x2[:400], np.arange(400), max_time_s=0.5, progress=False,
                  head_options=HEAD)
    assert Collection.open(tmp_path / "c").current == "glove-v1" and c.current == "glove-v1"


def _edit_manifest(f):
    def go(path):
        m = json.loads((path / MANIFEST_NAME).read_text())
        f(m)
        (path / MANIFEST_NAME).write_text(json.dumps(m))
    return go


def _model_dir(path):
    return path / json.loads((path / MANIFEST_NAME).read_text())["versions"][0]["model"]


def _index_file(path):
    return path / json.loads((path / MANIFEST_NAME).read_text())["index"]["file"]


def _codes_offset(f):
    """Byte offset of the first code in an index file (docs/FORMAT.md "Index file")."""
    import struct
    hlen = struct.unpack("<8sII", f.read_bytes()[:16])[2]
    return (16 + 64 + hlen + 63) // 64 * 64


def _flip(f, at):
    b = bytearray(f.read_bytes())
    b[at] ^= 1
    f.write_bytes(bytes(b))


def _memory_file(p):
    return p / json.loads((p / MANIFEST_NAME).read_text())["query_memory"]["glove-v1"]["file"]


DAMAGE = {
    "manifest truncated": lambda p: (p / MANIFEST_NAME).write_bytes(
        (p / MANIFEST_NAME).read_bytes()[:40]),
    "manifest format": _edit_manifest(lambda m: m.update(format_version=9)),
    "manifest metric": _edit_manifest(lambda m: m.update(metric="l2")),
    "manifest current": _edit_manifest(lambda m: m.update(current="nope")),
    "manifest model path": _edit_manifest(lambda m: m["versions"][0].update(model="../x")),
    "manifest query bits": _edit_manifest(lambda m: m.update(query_bits="4")),
    "manifest calibration": _edit_manifest(
        lambda m: m.update(own_calibration={"glove-v1": [-1, 0]})),
    "manifest missing key": _edit_manifest(lambda m: m.pop("spec")),
    "manifest merge table": _edit_manifest(
        lambda m: m.update(merge_calibration={"glove-v1": [[0.5, -1.0, 0.0]]})),
    "manifest merge state": _edit_manifest(
        lambda m: m.update(merge_calibration={"glove-v1": [[1.5, 1.0, 0.0]]})),
    "index path escapes": _edit_manifest(lambda m: m["index"].update(file="../../etc/passwd")),
    "model config changed": lambda p: (_model_dir(p) / "config.json").write_text(
        (_model_dir(p) / "config.json").read_text().replace('"hidden": 64', '"hidden": 65')),
    "model missing": lambda p: shutil.rmtree(_model_dir(p)),
    "index truncated": lambda p: _index_file(p).write_bytes(_index_file(p).read_bytes()[:-10]),
    "index codes flipped": lambda p: _flip(_index_file(p), _codes_offset(_index_file(p)) + 3),
    "index missing": lambda p: _index_file(p).unlink(),
    "memory flipped": lambda p: _flip(_memory_file(p), 200),
    "memory truncated": lambda p: _memory_file(p).write_bytes(_memory_file(p).read_bytes()[:-5]),
    "memory missing": lambda p: _memory_file(p).unlink(),
    "manifest memory file": _edit_manifest(
        lambda m: m["query_memory"]["glove-v1"].update(file="../x.npz")),
    "manifest memory k": _edit_manifest(lambda m: m["query_memory"]["glove-v1"].update(k=0)),
    "manifest memory of current": _edit_manifest(
        lambda m: m["query_memory"].update({"mixed-v2": m["query_memory"]["glove-v1"]})),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_directory_refused(case, upgraded, tmp_path):
    shutil.copytree(upgraded[0], tmp_path / "c")
    DAMAGE[case](tmp_path / "c")
    with pytest.raises((CorruptFileError, FileNotFoundError)):
        Collection.open(tmp_path / "c")


def test_crash_during_save_keeps_previous(floats, models, tmp_path, monkeypatch):
    g, _ = floats
    c = Collection.create(tmp_path / "c", models[0])
    c.add(g[:100])
    c.save()
    c.add(g[100:150])
    import bebr.collection as mod

    def boom(path, data):
        raise OSError("disk full")
    monkeypatch.setattr(mod, "atomic_write_bytes", boom)
    with pytest.raises(OSError, match="disk full"):
        c.save()
    monkeypatch.undo()
    back = Collection.open(tmp_path / "c")
    assert back.versions() == {"glove-v1": 100}
    c.save()  # the next save commits and removes the orphaned index file
    assert len(list((tmp_path / "c").glob("index-*.bebr"))) == 1
    assert Collection.open(tmp_path / "c").versions() == {"glove-v1": 150}


def _merge_oracle(s_old, s_new, mask, truth, cal, k=10):
    """Brute force: every item scored under its version (old scores mapped by ``cal``),
    one top-k over the whole gallery; R10@k and flips against the all-old top-1."""
    a, b = cal
    merged = np.where(mask[None, :], s_new, a * s_old + b)
    top = np.argsort(-merged, axis=1, kind="stable")[:, :k]
    old_top = np.argsort(-s_old, axis=1, kind="stable")[:, 0]
    hit = (top[:, :, None] == truth[:, None, :k]).any(2)
    old_ok = (old_top[:, None] == truth[:, :k]).any(1)
    return float(hit.mean()), float(np.mean(old_ok & ~hit[:, 0]))


@pytest.mark.parametrize("depth", [60, 200])
@pytest.mark.parametrize("metric_unit", [True, False])
def test_merge_curves_match_oracle(depth, metric_unit):
    """_merge_curves over top-``depth`` lists equals the full merge whenever the lists are
    deep enough (always at depth = n), for cosine and inner-product scores."""
    rng = np.random.default_rng(3)
    nq, n, d = 40, 200, 12
    qo, go = rng.standard_normal((nq, d)), rng.standard_normal((n, d))
    qn, gn = rng.standard_normal((nq, d)), rng.standard_normal((n, d))
    truth = rng.permuted(np.tile(np.arange(n), (nq, 1)), axis=1)[:, :10]
    tk_o = _topk_scores(qo, go, depth, metric_unit)
    tk_n = _topk_scores(qn, gn, depth, metric_unit)
    unit = (lambda z: z / np.linalg.norm(z, axis=1, keepdims=True)) if metric_unit \
        else (lambda z: z)
    s_old = (unit(qo) @ unit(go).T).astype(np.float32)
    s_new = (unit(qn) @ unit(gn).T).astype(np.float32)
    order = rng.permutation(n)
    for r in (0.0, 0.1, 0.5, 0.9, 1.0):
        mask = np.zeros(n, dtype=bool)
        mask[order[:int(round(r * n))]] = True
        for cal in ((1.0, 0.0), (0.8, 0.1), (1.2, -0.3)):
            rec, fl = _merge_curves(tk_o, tk_n, [mask], truth, cal)
            want = _merge_oracle(s_old, s_new, mask, truth, cal)
            # deep enough: the top-10 of either side among its masked items is in its list
            deep = all((~mask[tk_o[1][i]]).sum() >= 10 or (~mask).sum() < 10
                       for i in range(nq)) and all(
                (mask[tk_n[1][i]]).sum() >= 10 or mask.sum() < 10 for i in range(nq))
            if deep or depth >= n:
                assert rec[0] == pytest.approx(want[0]) and fl[0] == pytest.approx(want[1])


def test_merge_table_flip_aware(upgraded):
    """The upgrade's report holds one table entry per state and the held-out curves."""
    _, report = upgraded
    mc = report["merge_calibration"]["glove-v1"]
    assert [e[0] for e in mc["table"]] == list(MERGE_STATES)
    assert all(e[1] > 0 for e in mc["table"])
    assert set(mc["val"]) == {"states", "naive", "logistic", "chosen", "all_old"}


def test_merge_table_is_pooled_argmax():
    """Each entry maximises the pooled objective (R10@10 - MERGE_FLIP_WEIGHT x flips over
    the state and MERGE_WINDOW neighbours) among the candidates that cut the naive merge's
    pooled flips by MERGE_FLIP_MARGIN and keep R10@10 at or above the all-old search's (when
    none does: among those flipping no more than the naive merge), recomputed by brute-force
    full merges (continuous random scores: no ties)."""
    from bebr.collection import (MERGE_FLIP_MARGIN, MERGE_SCALES, MERGE_SHIFTS,
                                 _choose_merge_table)
    rng = np.random.default_rng(5)
    nq, n, d = 60, 300, 8
    qo, go = rng.standard_normal((nq, d)), rng.standard_normal((n, d))
    qn = qo @ rng.standard_normal((d, d)) * 0.3 + rng.standard_normal((nq, d))
    gn = go @ rng.standard_normal((d, d)) * 0.3 + rng.standard_normal((n, d))
    unit = lambda z: (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)  # noqa
    s_old, s_new = unit(qo) @ unit(go).T, unit(qn) @ unit(gn).T
    truth = np.argsort(-s_new - 0.5 * s_old, axis=1, kind="stable")[:, :10]
    order = rng.permutation(n)
    masks = []
    for r in MERGE_STATES:
        m = np.zeros(n, dtype=bool)
        m[order[:int(round(r * n))]] = True
        masks.append(m)
    cal = (0.8, 0.05)
    table, curves = _choose_merge_table(_topk_scores(qo, go, n), _topk_scores(qn, gn, n),
                                        masks, truth, cal)
    cands = [(1.0, 0.0), cal] + [(a, b) for a in MERGE_SCALES for b in MERGE_SHIFTS
                                 if (a, b) != (1.0, 0.0)]
    res = np.array([[_merge_oracle(s_old, s_new, m, truth, c) for m in masks] for c in cands])
    rec, fl = res[..., 0], res[..., 1]
    obj = rec - MERGE_FLIP_WEIGHT * fl
    all_old = _merge_oracle(s_old, s_new, np.zeros(n, bool), truth, (1.0, 0.0))[0]
    assert curves["all_old"] == pytest.approx(all_old)
    constrained = 0
    for i, (r, a, b) in enumerate(table):
        w = slice(max(0, i - MERGE_WINDOW), i + MERGE_WINDOW + 1)
        pooled = obj[:, w].mean(1)
        pf, naive_pf = fl[:, w].mean(1), fl[0, w].mean()
        ok = (pf <= (1 - MERGE_FLIP_MARGIN) * naive_pf + 1e-12) & (rec[:, i] >= all_old - 1e-12)
        constrained += bool(ok.any())
        pooled = np.where(ok if ok.any() else pf <= naive_pf + 1e-12, pooled, -np.inf)
        assert r == MERGE_STATES[i]
        assert pooled[cands.index((a, b))] == pytest.approx(pooled.max(), abs=1e-9)
        # never more flips than the naive merge on these rows; fewer where any map cuts them
        chosen_pf = fl[cands.index((a, b)), w].mean()
        assert chosen_pf < naive_pf if ok.any() else chosen_pf <= naive_pf
    assert constrained > 0  # the data exercise the constraint
    assert len({(a, b) for _, a, b in table}) > 1  # the data make the choice depend on r
    naive = [_merge_oracle(s_old, s_new, m, truth, (1.0, 0.0)) for m in masks]
    np.testing.assert_allclose(curves["naive"]["r10@10"], [v[0] for v in naive])
    np.testing.assert_allclose(curves["naive"]["flips"], [v[1] for v in naive])


def test_search_uses_state_entry(tmp_path, upgraded, floats, models):
    """The old items' scores are mapped by the table entry of the present re-encoded share:
    an entry that sinks the old items (tiny scale, shift -10) for the share 0.3 pushes every
    v1 item below every v2 item at that state, not at others; a collection without a table
    (older bebr) uses the single own calibration."""
    g, x2 = floats
    shutil.copytree(upgraded[0], tmp_path / "c")
    c = Collection.open(tmp_path / "c", mmap=False)  # 300 of 1000 items re-encoded
    table = [[r, 1.0, 0.0] for r in MERGE_STATES]
    table[2] = [0.3, 1e-3, -10.0]
    c._manifest["merge_calibration"]["glove-v1"] = table
    q = np.arange(1000, 1010)
    ids = c.search(x2[q], 20, older={"glove-v1": g[q]})[1]
    assert np.all(ids[:, :20] < 300)  # only the 300 re-encoded items (v2) come first
    c.upsert(x2[300:500], np.arange(300, 500))  # share 0.5: the naive entry
    ids = c.search(x2[q], 20, older={"glove-v1": g[q]})[1]
    assert np.any(ids >= 500)
    # no table: the single calibration, as collections of earlier bebr stored
    man = json.loads((tmp_path / "c" / MANIFEST_NAME).read_text())
    man.pop("merge_calibration")
    (tmp_path / "c" / MANIFEST_NAME).write_text(json.dumps(man))
    old = Collection.open(tmp_path / "c")
    assert old._merge_calibration("glove-v1") == tuple(man["own_calibration"]["glove-v1"])


def test_calibrate_refits_without_heads(tmp_path, floats, models):
    """calibrate() on the upgrade's own sample reproduces the upgrade's calibrations and
    merge table (heads untouched, saved); bad input is refused."""
    import copy
    g, x2 = floats
    v1, v2 = models
    c = Collection.create(tmp_path / "c", v1, metric="cosine")
    c.add(g[:800])
    sample = np.arange(100, 700)
    rep = c.upgrade(copy.deepcopy(v2), x2[sample], sample, older={"glove-v1": g[sample]},
                    members=1, progress=False, head_options=HEAD)
    head_cal = c.model.cross_calibration("glove-v1", "cosine")
    man = json.loads((tmp_path / "c" / MANIFEST_NAME).read_text())
    c._manifest["own_calibration"]["glove-v1"] = [2.0, 1.0]
    c._manifest["merge_calibration"].pop("glove-v1")
    again = c.calibrate(x2[sample], sample, older={"glove-v1": g[sample]})
    assert again["own_calibration"] == rep["own_calibration"]
    assert again["merge_calibration"]["glove-v1"]["table"] == \
        rep["merge_calibration"]["glove-v1"]["table"]
    back = json.loads((tmp_path / "c" / MANIFEST_NAME).read_text())
    assert back["own_calibration"] == man["own_calibration"]
    assert back["merge_calibration"] == man["merge_calibration"]
    assert Collection.open(tmp_path / "c").model.cross_calibration("glove-v1", "cosine") \
        == head_cal
    assert again["query_memory"] == rep["query_memory"]  # the same choice, refitted
    mem_only = c.calibrate(x2[sample], sample)  # no older floats: the query memory alone
    assert mem_only["own_calibration"] == {} and mem_only["query_memory"] == rep["query_memory"]
    assert Collection.open(tmp_path / "c")._manifest["query_memory"] == c._manifest["query_memory"]
    with pytest.raises(ValueError, match="nothing to refit"):
        c.calibrate(x2[:50], np.arange(50), older={})
    with pytest.raises(ValueError, match="that is the current version"):
        c.calibrate(x2[sample], sample, older={"mixed-v2": x2[sample]})
    with pytest.raises(ValueError, match="too few items of versions"):
        c.calibrate(x2[:50], np.arange(50), older={"glove-v1": g[:50]})
    with pytest.raises(ValueError, match=r"must hold the sample's 600 rows"):
        c.calibrate(x2[sample], sample, older={"glove-v1": g[:5]})
    with pytest.raises(ValueError, match="is not in the collection"):
        c.calibrate(x2[sample], sample, older={"nope": g[sample]})
    with pytest.raises(TypeError, match="joint_query must be a bool"):
        c.calibrate(x2[sample], sample, older={"glove-v1": g[sample]}, joint_query="yes")


def test_merge_table_only_with_one_older_version(tmp_path, upgraded):
    """With items of a second older version live, the single own calibration is used."""
    shutil.copytree(upgraded[0], tmp_path / "c")
    c = Collection.open(tmp_path / "c", mmap=False)
    c._manifest["merge_calibration"]["glove-v1"] = [[r, 1.0, -0.5] for r in MERGE_STATES]
    assert c._merge_calibration("glove-v1") == (1.0, -0.5)
    c._manifest["versions"].append({"version": "third", "model": "models/x",
                                    "config_sha256": "", "lineage": []})
    c.index.register_version("third")
    c.add_codes(c.index.get_codes(np.arange(2)), np.array([5000, 5001]), version="third")
    assert c._merge_calibration("glove-v1") == tuple(c._manifest["own_calibration"]["glove-v1"])
    c.remove(np.array([5000, 5001]))
    assert c._merge_calibration("glove-v1") == (1.0, -0.5)


def test_upgrade_fits_query_memory_chosen_on_held_out_rows(upgraded):
    """The memory's setting is the held-out best, above the head alone; the manifest holds
    it, and the memory holds every paired row of the version."""
    path, report = upgraded
    rep = report["query_memory"]["glove-v1"]
    scores = rep["val_r10@10"]
    ch = rep["chosen"]
    assert ch is not None  # (this fixture's data: the memory helps on its held-out rows)
    key = f"k={ch['k']} tau={ch['tau']:g} w={ch['weight']:g}"
    assert scores[key] == max(scores.values()) > scores["head"]
    c = Collection.open(path)
    e = c._manifest["query_memory"]["glove-v1"]
    assert (e["k"], e["tau"], e["weight"], e["calibration"]) == \
        (ch["k"], ch["tau"], ch["weight"], ch["calibration"])
    assert e["rows"] == rep["rows"] == 600 and len(c._memory("glove-v1")) == 600


def test_collection_without_memory_searches_with_head(upgraded, floats, models, tmp_path):
    """A collection of earlier bebr (no query_memory in its manifest) opens and scores the
    old items with the head alone, as the reference does without a memory."""
    g, x2 = floats
    shutil.copytree(upgraded[0], tmp_path / "c")
    man = json.loads((tmp_path / "c" / MANIFEST_NAME).read_text())
    man.pop("query_memory")
    (tmp_path / "c" / MANIFEST_NAME).write_text(json.dumps(man))
    c = Collection.open(tmp_path / "c", mmap=False)
    assert c._memory("glove-v1") is None
    items = {int(i): (v, code) for i, v, code in zip(
        c.index.ids(), c.index.versions_of(c.index.ids()), c.index.get_codes(c.index.ids()))}
    xq = x2[900:930]
    _assert_same_topk(c.search(xq, 10), _reference(c, items, xq, None, 10, models))
    with_memory = Collection.open(upgraded[0]).search(xq, 10)[1]
    assert (with_memory != c.search(xq, 10)[1]).any()  # the memory changes the old items' query


def test_query_memory_direction_matches_brute_force():
    """QueryMemory.direction against the numpy brute force (exact SDC cosine neighbours,
    softmax weights, mean unit old values), memories smaller than k included; round trip
    through bytes; bad input refused."""
    from bebr.query_memory import QueryMemory
    rng = np.random.default_rng(3)
    spec, qs = CodeSpec(24, 2), CodeSpec(24, 4)
    for n, k in ((300, 10), (7, 10), (1, 1)):
        nc = rng.integers(0, 256, (n, spec.code_bytes), dtype=np.uint8)
        oc = rng.integers(0, 256, (n, spec.code_bytes), dtype=np.uint8)
        mem = QueryMemory(spec, nc, oc, k=k, tau=0.07, weight=1.5, calibration=(0.9, 0.1))
        q = qs.pack(rng.integers(0, 16, (20, 24)).astype(np.uint8))
        got = mem.direction(q, 4)
        ref = QueryMemory(spec, nc, oc, k=min(k, n), tau=0.07, weight=1.5)
        np.testing.assert_allclose(got, _memory_direction(ref, q, qs), rtol=1e-5, atol=1e-6)
        back = QueryMemory.from_bytes(mem.to_bytes(), spec, k=k, tau=0.07, weight=1.5,
                                      calibration=(0.9, 0.1))
        np.testing.assert_array_equal(back.direction(q, 4), got)
        zh = rng.standard_normal((20, 24))
        want = _unit64(zh) + 1.5 * got
        np.testing.assert_array_equal(mem.query_codes(zh, q, 4),
                                      qs.pack(qs.quantize_angle(want.astype(np.float32))))
    with pytest.raises(ValueError, match="packed codes of the same rows"):
        QueryMemory(spec, nc, oc[:0], k=3, tau=0.1, weight=1.0)
    with pytest.raises(ValueError, match="k must be"):
        QueryMemory(spec, nc, oc, k=0, tau=0.1, weight=1.0)
    with pytest.raises(ValueError, match="tau and weight"):
        QueryMemory(spec, nc, oc, k=3, tau=float("nan"), weight=1.0)
    with pytest.raises(ValueError, match="calibration"):
        QueryMemory(spec, nc, oc, k=3, tau=0.1, weight=1.0, calibration=(-1.0, 0.0))
    with pytest.raises(CorruptFileError, match="not a readable query memory"):
        QueryMemory.from_bytes(b"junk", spec, k=3, tau=0.1, weight=1.0, calibration=(1, 0))
    with pytest.raises(CorruptFileError, match=r"\(n >= 1, 9\) packed codes"):
        QueryMemory.from_bytes(mem.to_bytes(), CodeSpec(24, 3), k=3, tau=0.1, weight=1.0,
                               calibration=(1, 0))


def test_ivf_collection_matches_flat_at_full_probe(upgraded, floats, models, tmp_path):
    """An IVF collection (create(nlist=...)) taken through the same steps as the flat
    ``upgraded`` one: its centroids trained on the first add, each version's items assigned
    by their own codes; with nprobe = nlist every search (new queries alone, with older
    floats, threads, filters), after save / open (mmap) too, gives the flat collection's
    results id for id and score for score; fewer lists give a subset of the items."""
    g, x2 = floats
    v1, v2 = models
    flat = Collection.open(upgraded[0])
    with pytest.raises(ValueError, match="at least 8 rows"):
        Collection.create(tmp_path / "small", v1, metric="ip", nlist=8).add(g[:5])
    c = Collection.create(tmp_path / "ivf", v1, metric="ip", nlist=8, nprobe=3)
    assert c.nlist == 8 and c.nprobe == 3 and flat.nlist is None
    empty = c.search(g[:3], 4)
    assert (empty[1] == -1).all() and np.isneginf(empty[0]).all()
    c.add(g[:1000])
    sample = np.arange(200, 800)
    c.upgrade(v2, x2[sample], sample, older={"glove-v1": g[sample]}, members=1,
              progress=False, head_options=HEAD, joint_query=True)
    c.upsert(x2[:300], np.arange(300))
    c.save()
    q = np.arange(1000, 1040)
    for coll in (c, Collection.open(tmp_path / "ivf")):
        assert isinstance(coll.index, bebr.IVFIndex) and coll.versions() == flat.versions()
        for older in (None, {"glove-v1": g[q]}):
            for kw in ({}, dict(threads=2), dict(filter=np.arange(0, 1000, 3))):
                want = flat.search(x2[q], 7, older=older, **kw)
                got = coll.search(x2[q], 7, older=older, nprobe=8, **kw)
                np.testing.assert_array_equal(got[1], want[1])
                np.testing.assert_array_equal(got[0], want[0])
            # nprobe 3 of 8: items of the probed lists, each with its full-probe score
            part = coll.search(x2[q], 7, older=older)
            every = coll.search(x2[q], 1000, older=older, nprobe=8)
            for r in range(len(q)):
                score_of = dict(zip(every[1][r].tolist(), every[0][r].tolist()))
                assert (part[1][r] >= 0).all()
                assert [score_of[i] for i in part[1][r]] == part[0][r].tolist()
                assert (np.diff(part[0][r]) <= 0).all()
    with pytest.raises(ValueError, match="nprobe applies to IVF"):
        flat.search(x2[q], 7, nprobe=4)
    with pytest.raises(ValueError, match="nprobe"):
        c.search(x2[q], 7, nprobe=0)
    with pytest.raises(ValueError, match="pass nlist"):
        Collection.create(tmp_path / "bad", v1, nprobe=4)
