"""Version identity: version strings in Index, the registry in the index file, old files."""

from pathlib import Path

import numpy as np
import pytest

import bebr
from bebr.fileio import CorruptFileError
from bebr.versions import VersionRegistry, version_tag

DATA = Path(__file__).parent / "data"


def _codes(spec, n, seed=0):
    return spec.pack(np.random.default_rng(seed).integers(0, 1 << spec.bits, (n, spec.dim)))


def test_version_tag_stable_and_decimal():
    assert version_tag("17") == 17 and version_tag(17) == 17
    t = version_tag("minilm-v1")
    assert 0 <= t < 2**31 and t == version_tag("minilm-v1") != version_tag("minilm-v2")
    with pytest.raises(TypeError, match="version must be a str"):
        version_tag(1.5)
    with pytest.raises(ValueError, match="non-empty"):
        version_tag("")
    with pytest.raises(ValueError, match=r"\[0, 2\*\*31\)"):
        version_tag(-1)


def test_index_version_strings_roundtrip(tmp_path):
    spec = bebr.CodeSpec(16, 2)
    c = _codes(spec, 60)
    idx = bebr.Index(spec, "cosine")
    idx.add(c[:40], version="minilm-v1")
    idx.register_version("mpnet-v2", lineage=["minilm-v1"])
    idx.add(c[40:], version="mpnet-v2")
    assert idx.versions() == {"minilm-v1": 40, "mpnet-v2": 20}
    assert np.array_equal(idx.ids_of_version("mpnet-v2"), np.arange(40, 60))
    assert idx.version_info()["mpnet-v2"].lineage == ("minilm-v1",)
    # version queries and calibrations keyed by strings equal the int-tag form
    q = c[:3]
    a = idx.search(q, 5, version_queries={"minilm-v1": c[5:8]},
                   version_calibration={"minilm-v1": (2.0, 0.1)})
    b = idx.search(q, 5, version_queries={version_tag("minilm-v1"): c[5:8]},
                   version_calibration={version_tag("minilm-v1"): (2.0, 0.1)})
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="twice"):
        idx.search(q, 5, version_queries={"minilm-v1": c[5:8], version_tag("minilm-v1"): q})
    idx.save(tmp_path / "i.bebr")
    back = bebr.Index.load(tmp_path / "i.bebr")
    assert back.versions() == idx.versions()
    assert back.version_info() == idx.version_info()
    with pytest.raises(ValueError, match="still has 40 items"):
        back.retire_version("minilm-v1")
    back.upsert(c[:40], np.arange(40), version="mpnet-v2")
    back.retire_version("minilm-v1")
    assert "minilm-v1" not in back.version_info() and back.versions() == {"mpnet-v2": 60}


def test_ints_keep_working_and_mix():
    spec = bebr.CodeSpec(8, 1)
    idx = bebr.Index(spec)
    idx.add(_codes(spec, 5), version=3)
    idx.add(_codes(spec, 5, 1), version="v-b")
    assert idx.versions() == {3: 5, "v-b": 5}
    assert idx.ids_of_version(3).tolist() == [0, 1, 2, 3, 4]


def test_registry_refuses_tag_collision(monkeypatch):
    monkeypatch.setattr("bebr.versions.version_tag", lambda v: 5)
    reg = VersionRegistry()
    reg.register("a")
    with pytest.raises(ValueError, match="same tag 5 as the registered version 'a'"):
        reg.register("b")


def test_format1_file_loads_unchanged():
    """A file written by the format-1 writer (before version strings) loads, searches the
    same and reports its tags; the CLI's hashed tags resolve from version strings."""
    idx = bebr.Index.load(DATA / "index-format1.bebr")
    codes = np.load(DATA / "index-format1-codes.npy")
    assert idx.versions() == {3: 50, version_tag("minilm-v1"): 98}
    assert len(idx.ids_of_version("minilm-v1")) == 98
    _, found = idx.search(codes[:4], 5)
    assert np.array_equal(found, np.load(DATA / "index-format1-top5.npy"))
    # adding by the version string adopts the hashed tag and names it from then on
    idx.add(codes[:1], ids=[5], version="minilm-v1")
    assert idx.versions() == {3: 50, "minilm-v1": 99}


@pytest.mark.parametrize("entries, match", [
    ("x", "must be a list"),
    ([{"version": "a"}], "must have keys"),
    ([{"version": "a", "tag": 1, "lineage": []}], "is not version_tag"),
    ([{"version": "a", "tag": version_tag("a"), "lineage": "b"}], "lineage must be"),
    ([{"version": "a", "tag": version_tag("a"), "lineage": []}] * 2, "registered twice"),
])
def test_registry_from_untrusted_list(entries, match):
    with pytest.raises(CorruptFileError, match=match):
        VersionRegistry.from_list(entries)
