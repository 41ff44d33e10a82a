"""Property test: a mutated index file is either loaded with the same search results or refused
with bebr.fileio.CorruptFileError, never a crash, a hang or another exception.

Mutations of valid saved files (ip, cosine and Hamming, with removals): truncation at any
point, flipped bytes anywhere, and edits of the JSON header (a key removed, a value retyped or
changed) written back with a recomputed header checksum and length, so that the header's own
checks, not the checksum, have to catch them. Each test prints how many cases it tried.
"""

import hashlib
import json
import struct
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bebr
from bebr import CodeSpec
from bebr.fileio import CorruptFileError

_FIXED = struct.Struct("<8sII")  # magic, format version, header length (docs/FORMAT.md)
_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _make(kind):
    rng = np.random.default_rng({"ip": 0, "cosine": 1, "hamming": 2}[kind])
    if kind == "hamming":
        spec = CodeSpec(70, 1)
        idx = bebr.HammingIndex(70)
    else:
        spec = CodeSpec(45, 2) if kind == "ip" else CodeSpec(33, 3)
        idx = bebr.Index(spec, kind)
    codes = spec.pack(rng.integers(0, spec.n_levels, (150, spec.dim)))
    if kind == "hamming":
        idx.add(codes)
    else:
        idx.register_version("model-b", lineage=["model-a"])
        idx.add(codes[:100], version="model-a")
        idx.add(codes[100:], ids=np.arange(500, 550), version="model-b")
    idx.remove(np.arange(0, 100, 4))
    return idx, codes[:4]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{kind: (file bytes, index class, queries, expected (scores, ids))} and a scratch dir."""
    d = tmp_path_factory.mktemp("mutation")
    out = {}
    for kind in ("ip", "cosine", "hamming"):
        idx, q = _make(kind)
        path = d / f"{kind}.bebr"
        idx.save(path)
        out[kind] = (path.read_bytes(), type(idx), q, idx.search(q, 7, threads=1))
    return out, d


def _split(data):
    magic, version, hlen = _FIXED.unpack_from(data)
    start = _FIXED.size + 64 + hlen
    data_start = (start + 63) // 64 * 64
    return magic, version, json.loads(data[_FIXED.size + 64:start]), data[data_start:]


def _join(magic, version, header, data_area):
    hbytes = json.dumps(header, sort_keys=True).encode()
    hsum = hashlib.sha256(hbytes).hexdigest().encode()
    start = _FIXED.size + 64 + len(hbytes)
    pad = b"\x00" * ((start + 63) // 64 * 64 - start)
    return _FIXED.pack(magic, version, len(hbytes)) + hsum + hbytes + pad + data_area


def _check(files, kind, content, counts, semantic_edit=False):
    """Load content both ways; it must be refused (CorruptFileError) or give the same results."""
    (table, d) = files
    _, cls, q, (want_s, want_i) = table[kind]
    path = d / f"case_{kind}.bebr"
    path.write_bytes(content)
    counts["tried"] += 1
    for mmap in (True, False):
        try:
            idx = cls.load(path, mmap=mmap)
        except CorruptFileError:
            counts["refused"] += 1
            continue
        counts["loaded"] += 1
        if semantic_edit and (idx.spec.code_bytes != table[kind][2].shape[1]):
            continue  # a consistent header describing another index: loaded as it says
        try:
            s, i = idx.search(q, 7, threads=1)
        except (ValueError, TypeError):
            assert semantic_edit, "loaded index refuses the original queries"
            continue
        if not semantic_edit:
            np.testing.assert_array_equal(i, want_i)
            np.testing.assert_array_equal(s, want_s)
        del idx


def _report(capsys, name, counts):
    with capsys.disabled():
        print(f"\n[index mutation] {name}: {counts['tried']} files tried, "
              f"{counts['loaded']} loads kept the results, {counts['refused']} refused")


KINDS = st.sampled_from(["ip", "cosine", "hamming"])


def test_truncated_files(files, capsys):
    counts = Counter()

    @settings(max_examples=120, **_SETTINGS)
    @given(kind=KINDS, frac=st.floats(0, 1, exclude_max=True))
    def run(kind, frac):
        data = files[0][kind][0]
        _check(files, kind, data[: int(frac * len(data))], counts)

    run()
    _report(capsys, "truncations", counts)
    assert counts["tried"] >= 100 and counts["loaded"] == 0  # every truncation is refused


def test_flipped_bytes(files, capsys):
    counts = Counter()

    @settings(max_examples=200, **_SETTINGS)
    @given(kind=KINDS, flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                st.integers(1, 255)), min_size=1, max_size=4))
    def run(kind, flips):
        data = bytearray(files[0][kind][0])
        for frac, x in flips:
            data[int(frac * len(data))] ^= x
        _check(files, kind, bytes(data), counts)

    run()
    _report(capsys, "flipped bytes", counts)
    assert counts["tried"] >= 150 and counts["refused"] > 0


def _paths(obj, prefix=()):
    """Every (path, value) below a JSON object, containers included."""
    out = []
    if isinstance(obj, dict):
        items = obj.items()
    else:
        items = enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        out.append((prefix + (k,), v))
        out.extend(_paths(v, prefix + (k,)))
    return out


RETYPED = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=False), st.text(max_size=5),
                    st.just([]), st.just({}), st.just([1, 2]), st.just({"a": 1}),
                    st.just("0" * 64), st.just("<i8"), st.just(-1), st.just(2**63))


@st.composite
def header_edits(draw):
    kind = draw(KINDS)
    op = draw(st.sampled_from(["remove", "retype", "nudge"]))
    return kind, draw(st.integers(0, 10**6)), op, draw(RETYPED), draw(st.integers(-3, 3))


def test_edited_json_headers(files, capsys):
    counts = Counter()

    @settings(max_examples=400, **_SETTINGS)
    @given(edit=header_edits())
    def run(edit):
        kind, pick, op, value, delta = edit
        magic, version, header, data_area = _split(files[0][kind][0])
        paths = _paths(header)
        path, old = paths[pick % len(paths)]
        parent = header
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        if op == "remove":
            if isinstance(parent, dict):
                del parent[key]
            else:
                parent.pop(key)
        elif op == "nudge" and isinstance(old, int) and not isinstance(old, bool):
            parent[key] = old + (delta or 1)
        else:
            parent[key] = value
        semantic = path[0] in ("spec", "metric", "nbits") and op != "remove"
        _check(files, kind, _join(magic, version, header, data_area), counts, semantic)

    run()
    _report(capsys, "edited JSON headers", counts)
    assert counts["tried"] >= 300 and counts["refused"] > counts["tried"]  # most refused both ways
