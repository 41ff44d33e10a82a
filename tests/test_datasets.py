"""Real-data loaders: GloVe word selection, MiniLM cache, split and exact ground truth."""

import numpy as np
import pytest

from bebr import datasets as ds


def test_glove_words_alphabetic_frequency_order():
    words, x = ds.glove_words(3000)
    assert len(words) == 3000 and x.shape == (3000, 50) and x.dtype == np.float32
    assert all(w.isalpha() for w in words)
    assert words[:3] == ["the", "of", "to"]  # GloVe frequency order, punctuation skipped
    assert len(set(words)) == 3000
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    words2, x2 = ds.glove_words(100)
    assert words2 == words[:100]
    np.testing.assert_array_equal(x2, x[:100])


@pytest.mark.parametrize("n, exc", [(0, ValueError), (-3, ValueError), (2.5, TypeError),
                                    (True, TypeError)])
def test_glove_words_bad_n(n, exc):
    with pytest.raises(exc, match="n must"):
        ds.glove_words(n)


def test_query_split_disjoint_deterministic():
    q, b = ds.query_split(1000, 100, seed=0)
    assert len(q) == 100 and len(b) == 900
    assert len(np.intersect1d(q, b)) == 0
    assert np.array_equal(np.union1d(q, b), np.arange(1000))
    q2, _ = ds.query_split(1000, 100, seed=0)
    q3, _ = ds.query_split(1000, 100, seed=1)
    assert np.array_equal(q, q2) and not np.array_equal(q, q3)
    with pytest.raises(ValueError, match="nq"):
        ds.query_split(10, 10)


def test_exact_topk_matches_bruteforce():
    rng = np.random.default_rng(0)
    base = ds.l2_normalize(rng.standard_normal((700, 16)))
    qs = ds.l2_normalize(rng.standard_normal((50, 16)))
    got = ds.exact_topk(qs, base, 7, chunk=16)
    sims = qs @ base.T
    want = np.argsort(-sims, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(got, want)
    assert ds.recall_at(got, want) == 1.0
    assert ds.recall_at(got[:, ::-1][:, :3], want[:, :3]) < 1.0
    with pytest.raises(ValueError, match="k must"):
        ds.exact_topk(qs, base, 0)
    with pytest.raises(ValueError, match="equal dims"):
        ds.exact_topk(qs[:, :5], base, 3)


def test_minilm_embeddings_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("BEBR_DATA", str(tmp_path))
    words = ["king", "queen", "apple", "banana", "car"]
    e = ds.minilm_embeddings(words)
    assert e.shape == (5, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sims = e @ e.T
    assert sims[0, 1] > sims[0, 2] and sims[2, 3] > sims[2, 4]  # king~queen, apple~banana
    cached = list(tmp_path.glob("minilm-*.npy"))
    assert len(cached) == 1
    np.testing.assert_array_equal(ds.minilm_embeddings(words), e)
    cached[0].write_bytes(cached[0].read_bytes()[:100])  # truncate the cache
    with pytest.raises(ds.CorruptFileError, match="delete the file"):
        ds.minilm_embeddings(words)
    with pytest.raises(ValueError, match="empty"):
        ds.minilm_embeddings([])


def test_embeddings_cached_in_blocks_shared_by_prefixes(tmp_path, monkeypatch):
    monkeypatch.setenv("BEBR_DATA", str(tmp_path))
    monkeypatch.setattr(ds, "EMBED_BLOCK", 2)
    words = ["king", "queen", "apple", "banana", "car"]
    assert not ds.embeddings_cached("minilm-l6-v2", words)
    e = ds.minilm_embeddings(words)
    assert e.shape == (5, 384)
    assert len(list(tmp_path.glob("minilm-*.npy"))) == 3  # blocks of 2, 2 and 1 words
    assert ds.embeddings_cached("minilm-l6-v2", words)
    assert ds.embeddings_cached("minilm-l6-v2", words[:4])
    assert not ds.embeddings_cached("minilm-l6-v2", words[1:])
    assert not ds.embeddings_cached("mpnet-base-v2", words)
    whole = ds.minilm_embeddings(words, cache=False)  # one encode call over all five
    np.testing.assert_allclose(e, whole, atol=1e-5)

    def no_model():
        raise AssertionError("the model was loaded although every block is cached")

    monkeypatch.setattr(ds, "_minilm_model_dir", no_model)
    np.testing.assert_array_equal(ds.minilm_embeddings(words[:4]), e[:4])  # prefix: cached
    np.testing.assert_array_equal(ds.minilm_embeddings(words), e)
    with pytest.raises(AssertionError, match="was loaded"):
        ds.minilm_embeddings(words[1:])  # other block boundaries: nothing cached


def test_mpnet_missing_packages_named(tmp_path, monkeypatch):
    monkeypatch.setenv("BEBR_DATA", str(tmp_path))
    monkeypatch.setattr(ds, "MPNET_PACKAGES", ("bebr-no-such-package-part-001",))
    with pytest.raises(ImportError, match=r"bebr\[mpnet\]"):
        ds.mpnet_embeddings(["king"], cache=False)


def _have_mpnet() -> bool:
    from importlib import metadata
    try:
        for name in ds.MPNET_PACKAGES:
            metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _have_mpnet(), reason="needs pip install 'bebr[mpnet]'")
def test_mpnet_embeddings_unpacked_once(tmp_path, monkeypatch):
    monkeypatch.setenv("BEBR_DATA", str(tmp_path))
    words = ["king", "queen", "apple", "banana"]
    e = ds.mpnet_embeddings(words)
    assert e.shape == (4, 768) and e.dtype == np.float32
    sims = e @ e.T
    assert sims[0, 1] > sims[0, 2] and sims[2, 3] > sims[2, 1]
    assert (tmp_path / "models" / "all-mpnet-base-v2" / "modules.json").exists()
    assert not list((tmp_path / "models").glob(".mpnet-*"))  # no temporary left behind
    np.testing.assert_array_equal(ds.mpnet_embeddings(words), e)
