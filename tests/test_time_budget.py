"""--max-time / max_time_s bounds the whole training call: neighbour mining, training and the
query heads; what was cut is reported; nothing changes when the limit is not reached."""

import time

import numpy as np
import pytest
import torch

import bebr
from bebr.cli import main
from bebr.train import mine_neighbors

SLACK_S = 10.0  # generous: the machine is shared; the unbounded runs take minutes


def _rows(n, d, seed):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.fixture
def warm_torch():
    """torch imports its compiler stack on the first optimizer (seconds on a loaded machine):
    a one-off cost of the process, not of the call under test."""
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])


def test_mine_neighbors_limit_not_reached_is_identical_and_reached_is_valid():
    x = torch.from_numpy(_rows(3000, 16, 0))
    ref = mine_neighbors(x, 5, chunk=256)
    assert torch.equal(mine_neighbors(x, 5, chunk=256, time_limit_s=1e6), ref)
    cuts = []
    out = mine_neighbors(x, 5, chunk=256, time_limit_s=0.0, cuts=cuts)
    assert out.shape == ref.shape and 0 <= int(out.min()) and int(out.max()) < 3000
    assert not (out == torch.arange(3000)[:, None]).any(), "a row is its own neighbour"
    assert torch.equal(out[:256], ref[:256])  # the first chunk is always exact
    assert cuts and "neighbour mining" in cuts[0]


def test_no_limit_reached_gives_identical_training():
    x = _rows(600, 16, 1)
    kw = dict(epochs=2, progress=False, seed=3, threads=1, hidden=16)
    a = bebr.train_binarizer(x, 8, 2, **kw)
    b = bebr.train_binarizer(x, 8, 2, max_time_s=1e6, **kw)
    assert b.train_info["time_budget"]["cuts"] == []
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "3", True])
def test_bad_max_time_is_refused(bad):
    with pytest.raises(ValueError, match="max_time_s must be None or a finite number"):
        bebr.train_binarizer(_rows(100, 8, 0), 8, 2, max_time_s=bad, progress=False)


def test_cli_train_max_time_bounds_the_command(tmp_path, capsys, warm_torch):
    # 40k x 64 rows: mining alone is an n^2 scan of ~40 s and training ~8 epochs unbounded
    np.save(tmp_path / "x.npy", _rows(40_000, 64, 2))
    budget = 3.0
    t0 = time.monotonic()
    rc = main(["train", str(tmp_path / "x.npy"), "-o", str(tmp_path / "m"), "--dim", "32",
               "--bits", "2", "--max-time", str(budget), "--threads", "1"])
    elapsed = time.monotonic() - t0
    assert rc == 0
    assert elapsed < budget + SLACK_S, f"bebr train --max-time {budget} ran {elapsed:.1f} s"
    err = capsys.readouterr().err
    assert "--max-time 3 s cut neighbour mining" in err
    assert "--max-time 3 s cut training: stopped at the time limit" in err
    m = bebr.Binarizer.load(tmp_path / "m")
    assert m.encode(_rows(5, 64, 9)).shape == (5, m.spec.code_bytes)


def test_query_head_within_budget(warm_torch):
    # 40k rows (30k fitted, the rest held out for validation): unbounded, the head's
    # neighbour mining alone is an n x n scan of well over its 30% of the budget even on an
    # idle machine, and each member trains for minutes
    x_new = _rows(40_000, 48, 4)
    codes = bebr.CodeSpec(16, 2).pack(np.random.default_rng(5).integers(0, 4, (40_000, 16),
                                                                        dtype=np.uint8))
    torch.manual_seed(0)
    new = bebr.Binarizer(48, 16, 2, hidden=16, version="new-v2")
    budget = 4.0
    t0 = time.monotonic()
    new = bebr.train_cross_queries(new, x_new, codes, "old-v1", progress=False, threads=1,
                                   max_time_s=budget, members=2)
    elapsed = time.monotonic() - t0
    assert elapsed < budget + SLACK_S, \
        f"train_cross_queries(max_time_s={budget}) ran {elapsed:.1f} s"
    tb = new.train_info["cross_val"]["old-v1"]["time_budget"]
    assert tb["max_time_s"] == budget and tb["cuts"]
    assert any("neighbour mining" in c for c in tb["cuts"]), tb["cuts"]
    q = new.encode_query_codes(x_new[:3], 4, target="old-v1")
    assert q.shape[0] == 3


def test_cli_train_shows_progress_unless_quiet(tmp_path, capsys):
    np.save(tmp_path / "x.npy", _rows(3000, 16, 5))
    args = ["train", str(tmp_path / "x.npy"), "--dim", "8", "--bits", "2", "--epochs", "1",
            "--threads", "1"]
    assert main(args + ["-o", str(tmp_path / "m1")]) == 0
    err = capsys.readouterr().err
    assert "mining neighbours" in err and "bebr 8x2" in err and "trained" in err
    assert main(args + ["-o", str(tmp_path / "m2"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
