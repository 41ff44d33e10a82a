"""train_binarizer: input validation, real-data quality vs sign-LSH, determinism, hooks."""

import numpy as np
import pytest
import torch

from bebr import datasets as ds
from bebr.model import Binarizer
from bebr.reference import search_codes
from bebr.train import _init_scalar_quantizer, _self_quantize, itq_rotation, train_binarizer

FAST = dict(hidden=32, progress=False, epochs=2, threads=1)


@pytest.fixture(scope="module")
def glove():
    _, x = ds.glove_words(3000)
    qi, bi = ds.query_split(len(x), 200, seed=0)
    gt = ds.exact_topk(x[qi], x[bi], 10)
    return x, qi, bi, gt


def _recall(model, x, qi, bi, gt):
    spec = model.spec
    _, ids = search_codes(spec, model.encode(x[qi]), model.encode(x[bi]), np.arange(len(bi)),
                          10, "cosine")
    return ds.recall_at(ids, gt)


def _lsh_recall(x, qi, bi, gt, nbits, seed=0):
    rot = np.linalg.qr(np.random.default_rng(seed).standard_normal((nbits, nbits)))[0]
    proj = rot[:, : x.shape[1]] if nbits >= x.shape[1] else rot[: x.shape[1], :nbits].T
    bits = (x @ proj.T >= 0).astype(np.uint8)
    spec = __import__("bebr").CodeSpec(nbits, 1)
    _, ids = search_codes(spec, spec.pack(bits[qi]), spec.pack(bits[bi]), np.arange(len(bi)),
                          10, "ip")
    return ds.recall_at(ids, gt)


def test_trained_model_beats_sign_lsh_on_real_glove(glove):
    x, qi, bi, gt = glove
    model = train_binarizer(x[bi], 50, 1, seed=0, **FAST)
    assert isinstance(model, Binarizer) and not model.training
    ours = _recall(model, x, qi, bi, gt)
    lsh = np.mean([_lsh_recall(x, qi, bi, gt, 50, seed=s) for s in range(3)])
    assert ours > lsh + 0.03, (ours, lsh)
    # two bits per dim at the same dims is better again
    model2 = train_binarizer(x[bi], 50, 2, seed=0, **FAST)
    assert _recall(model2, x, qi, bi, gt) > ours + 0.05


def test_training_log_and_best_epoch_kept(glove):
    x, _, bi, _ = glove
    log = []
    m = train_binarizer(x[bi], 32, 2, seed=0, log=log, patience=10, **dict(FAST, epochs=3))
    assert [e["epoch"] for e in log] == [0, 1, 2, 3]
    assert all(np.isfinite(e["loss"]) for e in log[1:])
    assert m.train_info["val_r10@10"] == max(e["val_r10@10"] for e in log)


def test_scalar_quantizer_init_beats_sign_of_same_projection(glove):
    # the init alone: 4 bits per dim of the rotated PCA projection beat 1 bit per dim clearly
    x, qi, bi, gt = glove
    m4 = train_binarizer(x[bi], 50, 4, seed=0, **dict(FAST, epochs=1))
    m1 = train_binarizer(x[bi], 50, 1, seed=0, **dict(FAST, epochs=1))
    assert _recall(m4, x, qi, bi, gt) > _recall(m1, x, qi, bi, gt) + 0.2


def _angular_error(z, c):
    return float((1 - torch.nn.functional.cosine_similarity(z, c, dim=1)).mean())


@pytest.fixture
def one_thread():
    """torch at 1 thread (small linear algebra is slower with threads on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_itq_rotation_orthogonal_and_lowers_quantization_error(glove, one_thread):
    # real GloVe rows, top-32 PCA directions under a random rotation (the init's basis)
    x, _, bi, _ = glove
    xn = torch.nn.functional.normalize(torch.from_numpy(x[bi]), dim=1)
    vecs = torch.linalg.eigh((xn.T @ xn).double())[1].flip(1)[:, :32].float()
    rot = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(0)))[0]
    z = xn @ vecs @ rot
    for bits in (2, 4):
        R = itq_rotation(z, bits, iters=20)
        assert R.shape == (32, 32)
        torch.testing.assert_close(R @ R.T, torch.eye(32), atol=1e-5, rtol=0)
        before = _angular_error(z, _self_quantize(z, bits))
        after = _angular_error(z @ R, _self_quantize(z @ R, bits))
        assert after < 0.95 * before, (bits, before, after)
    assert torch.equal(itq_rotation(z, 2, iters=0), torch.eye(32))


def test_self_quantize_is_what_the_initialised_model_encodes(glove, one_thread):
    x, _, bi, _ = glove
    xs = torch.from_numpy(x[bi[:500]])
    for bits, itq in ((1, 0), (3, 0), (3, 5)):
        m = Binarizer(50, 20, bits, depth=0)
        with torch.no_grad():
            _init_scalar_quantizer(m, xs, torch.Generator().manual_seed(1), itq_iters=itq)
        q = m.W.skip.weight / m.W.skip.weight.norm(dim=1, keepdim=True)  # the basis Q
        want = _self_quantize(torch.nn.functional.normalize(xs, dim=1) @ q.T, bits)
        np.testing.assert_array_equal(m.encode_values(x[bi[:500]]), want.numpy())


def test_itq_init_and_init_kept_if_training_does_not_help(glove):
    x, _, bi, _ = glove
    log = []
    m = train_binarizer(x[bi], 32, 2, seed=0, log=log, center=False,
                        **dict(FAST, epochs=1, lr=1.0))
    assert torch.count_nonzero(m.in_mean) == 0
    # a destructive learning rate: the best epoch is the init (epoch 0), which is returned
    assert log[1]["val_r10@10"] < log[0]["val_r10@10"]
    assert m.train_info["val_r10@10"] == log[0]["val_r10@10"]
    base = train_binarizer(x[bi], 32, 2, seed=0, itq_iters=0, center=False,
                           **dict(FAST, epochs=1, lr=1.0))
    assert m.train_info["val_r10@10"] > base.train_info["val_r10@10"]


def test_deterministic_for_a_seed(glove):
    x, _, bi, _ = glove
    xs = x[bi[:1500]]
    a = train_binarizer(xs, 24, 2, seed=3, **FAST)
    b = train_binarizer(xs, 24, 2, seed=3, **FAST)
    c = train_binarizer(xs, 24, 2, seed=4, **FAST)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=0)
    np.testing.assert_array_equal(a.encode(x), b.encode(x))
    assert not np.array_equal(a.encode(x), c.encode(x))


@pytest.mark.parametrize("loss", ["nce", "both"])
def test_other_losses_train(glove, loss):
    x, qi, bi, gt = glove
    m = train_binarizer(x[bi], 50, 1, loss=loss, seed=0, **dict(FAST, epochs=1))
    assert _recall(m, x, qi, bi, gt) > _lsh_recall(x, qi, bi, gt, 50)


def test_extra_loss_hook_sees_batch_rows(glove):
    x, _, bi, _ = glove
    xs = x[bi[:1000]]
    seen = []

    def extra(model, out, xb, idx):
        seen.append(len(idx))
        np.testing.assert_allclose(xb.numpy(), xs[idx], atol=1e-6)
        assert out.codes.shape == (len(idx), 16) and len(out.bits) == 2
        return 0.0 * out.codes.sum()

    train_binarizer(xs, 16, 2, extra_loss=extra, seed=0, **dict(FAST, epochs=1))
    assert seen and all(s > 1 for s in seen)


def test_memmap_input_sampled(tmp_path, glove):
    x, _, bi, _ = glove
    p = tmp_path / "x.npy"
    np.save(p, x[bi])
    mm = np.load(p, mmap_mode="r")
    m = train_binarizer(mm, 16, 1, max_train_rows=1000, seed=0, **dict(FAST, epochs=1))
    assert m.train_info["train_rows"] < 1000
    assert m.encode(mm).shape == (len(bi), 2)


@pytest.mark.parametrize("bad, exc, match", [
    (np.zeros((0, 8), np.float32), ValueError, "at least"),
    (np.zeros(8, np.float32), ValueError, "2-d"),
    (np.array([["x"] * 4] * 30), TypeError, "numeric"),
    (np.where(np.eye(30, 8) > 0, np.nan, 1.0), ValueError, "NaN"),
    (np.where(np.eye(30, 8) > 0, np.inf, 1.0), ValueError, "NaN or inf"),
    (np.ones((5, 8), np.float32), ValueError, "at least 20 rows"),
])
def test_bad_inputs(bad, exc, match):
    with pytest.raises(exc, match=match):
        train_binarizer(bad, 8, 1, progress=False)


@pytest.mark.parametrize("kw, match", [({"dim": 0}, "dim"), ({"bits": 0}, "bits"),
                                       ({"bits": 5}, "bits"), ({"loss": "mse"}, "loss"),
                                       ({"val_fraction": 0.9}, "val_fraction"),
                                       ({"epochs": 0}, "epochs"),
                                       ({"batch_size": -1}, "batch_size")])
def test_bad_arguments(kw, match):
    x = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
    args = dict(dim=8, bits=1)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        train_binarizer(x, args.pop("dim"), args.pop("bits"), progress=False, **args)


def test_query_codes_with_more_bits_raise_recall(glove):
    """4-bit query codes against the same 2-bit stored codes: better recall than symmetric
    codes, searched through bebr.Index and equal to the numpy reference; a model trained with
    query_bits=4 validates with such queries."""
    import bebr

    x, qi, bi, gt = glove
    model = train_binarizer(x[bi], 50, 2, seed=0, query_bits=4, **FAST)
    assert 0 < model.train_info["val_r10@10"] <= 1
    stored = model.encode(x[bi])
    q4 = model.encode_query_codes(x[qi], 4)
    assert q4.shape == (len(qi), bebr.CodeSpec(50, 4).code_bytes) and q4.dtype == np.uint8
    # default bits: the model's own, the angle-closest code to the query projection
    np.testing.assert_array_equal(model.encode_query_codes(x[qi]), model.spec.pack(
        model.spec.quantize_angle(model.encode_query(x[qi]))))
    index = bebr.Index(model.spec, "cosine")
    index.add(stored)
    _, ids4 = index.search(q4, 10, query_bits=4)
    want = search_codes(model.spec, q4, stored, np.arange(len(bi)), 10, "cosine",
                        query_spec=bebr.CodeSpec(50, 4))
    assert (ids4 == want[1]).mean() > 0.99  # cosine near-ties may order differently
    r4 = ds.recall_at(ids4, gt)
    r2 = _recall(model, x, qi, bi, gt)
    assert r4 > r2 + 0.03, (r4, r2)
    with pytest.raises(ValueError, match="bits must be an int in"):
        model.encode_query_codes(x[qi], 8)
    with pytest.raises(ValueError, match="query_bits"):
        train_binarizer(x[bi], 8, 1, progress=False, query_bits=0)
