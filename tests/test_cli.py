"""The ``bebr`` command line end to end on real GloVe rows: train -> encode (npy / parquet /
fvecs shards) -> index -> search through real subprocesses, resume after a killed process,
and a clear one-line error for every bad input. (The many error cases call ``bebr.cli.main``
in this process, the same code a subprocess runs, to keep the suite fast; a few run as real
processes to show no traceback escapes.)"""

import contextlib
import filecmp
import io
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bebr import CodeSpec
from bebr.cli import main
from bebr.distributed import load_index as bebr_index_load
from bebr.datasets import glove_words
from bebr.io import CodeShards, Manifest, write_vecs
from bebr.io.codeshards import CRASH_ENV

N_BASE = 3000


def bebr(*args, env=None, check=True):
    """Run ``python -m bebr.cli ARGS``; returns the CompletedProcess."""
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "bebr.cli", *map(str, args)],
                       capture_output=True, text=True, env=e, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"bebr {args} failed ({p.returncode}):\n{p.stderr}")
    return p


def cli(*args, check=False):
    """Run ``bebr.cli.main(ARGS)`` in this process; returns returncode/stdout/stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # --help and argparse usage errors
            rc = e.code
    p = SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())
    if check and rc != 0:
        raise AssertionError(f"bebr {args} failed ({rc}):\n{p.stderr}")
    return p


def assert_clean_error(p, match):
    """Exit status 1 and exactly one stderr line ``bebr: error: ...`` containing ``match``."""
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1, p.stderr
    assert len(lines) == 1 and lines[0].startswith("bebr: error: "), p.stderr
    assert "Traceback" not in p.stderr
    assert match in lines[0], lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """GloVe rows as .npy shards, a parquet file with ids, an .fvecs file; a trained model."""
    d = tmp_path_factory.mktemp("cli")
    x = glove_words(N_BASE + 200)[1]
    (d / "npy").mkdir()
    np.save(d / "npy" / "part-0.npy", x[:1800])
    np.save(d / "npy" / "part-1.npy", x[1800:N_BASE])
    np.save(d / "queries.npy", x[N_BASE:])
    flat = pa.array(x[:N_BASE].ravel(), type=pa.float32())
    pq.write_table(pa.table({"id": np.arange(N_BASE, dtype=np.int64),
                             "emb": pa.FixedSizeListArray.from_arrays(flat, 50)}),
                   d / "base.parquet", row_group_size=700)
    write_vecs(d / "base.fvecs", x[:N_BASE])
    bebr("train", d / "npy", "-o", d / "model", "--dim", 32, "--bits", 2, "--epochs", 2,
         "--version", "v1", "--threads", 1, "--no-progress")
    return d, x


def test_help_for_every_command():
    for cmd in (["--help"], ["train", "--help"], ["encode", "--help"],
                ["collection", "--help"], ["index", "--help"], ["index", "build", "--help"], ["index", "add", "--help"],
                ["index", "remove", "--help"], ["index", "info", "--help"],
                ["search", "--help"], ["eval", "--help"], ["bench", "--help"],
                ["demo", "--help"]):
        p = cli(*cmd)
        assert p.returncode == 0 and "usage: bebr" in p.stdout and len(p.stdout) > 200, cmd
    assert ".fvecs" in cli("encode", "--help").stdout
    for cmd in ([], ["index"]):  # a missing command is a usage error: help on stderr, 2
        p = cli(*cmd)
        assert p.returncode == 2 and "usage: bebr" in p.stderr
    p = cli("encode", "--model")
    assert p.returncode == 2 and "expected one argument" in p.stderr
    assert ".parquet" in bebr("search", "--help").stdout  # and as a real process


def test_train_encode_index_search(work, tmp_path):
    d, x = work
    from bebr import Binarizer
    from bebr.reference import search_codes

    model = Binarizer.load(d / "model")
    assert model.version == "v1" and model.spec.to_dict() == {"dim": 32, "bits": 2}
    outs = {}
    for name, inp in (("npy", d / "npy"), ("parquet", d / "base.parquet"),
                      ("fvecs", d / "base.fvecs")):
        out = tmp_path / name
        run = bebr if name == "npy" else cli
        p = run("encode", "--model", d / "model", inp, "-o", out, "--chunk-rows", 512,
                "--shard-rows", 1000, "--no-progress")
        assert "encoded 3000 vectors" in p.stderr
        outs[name] = CodeShards(out).load_all()
    ref = model.encode(x[:N_BASE], batch_size=512)
    for name, (codes, ids) in outs.items():
        np.testing.assert_array_equal(codes, ref, err_msg=name)
        np.testing.assert_array_equal(ids, np.arange(N_BASE), err_msg=name)

    idx = tmp_path / "index.bebr"
    bebr("index", "build", tmp_path / "npy", "-o", idx)
    info = json.loads(bebr("index", "info", idx).stdout)
    assert info["count"] == N_BASE and info["spec"] == {"dim": 32, "bits": 2}

    p = bebr("search", "--index", idx, "--model", d / "model", d / "queries.npy", "-k", 5)
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(rows) == 200 and all(len(r["ids"]) == 5 for r in rows)
    q = model.encode(x[N_BASE:])
    want_s, want_i = search_codes(model.spec, q, ref, np.arange(N_BASE), 5)
    np.testing.assert_array_equal(np.array([r["ids"] for r in rows]), want_i)
    np.testing.assert_allclose(np.array([r["scores"] for r in rows]), want_s)

    cli("search", "--index", idx, "--model", d / "model", d / "queries.npy", "-k", 5, "-o",
        tmp_path / "res.jsonl", check=True)
    assert (tmp_path / "res.jsonl").read_text() == p.stdout

    # 4-bit query codes against the 2-bit index, from floats and from packed codes
    p4 = bebr("search", "--index", idx, "--model", d / "model", d / "queries.npy", "-k", 5,
              "--query-bits", 4)
    q4 = model.encode_query_codes(x[N_BASE:], 4)
    want4 = search_codes(model.spec, q4, ref, np.arange(N_BASE), 5,
                         query_spec=CodeSpec(32, 4))
    np.testing.assert_array_equal(np.array([json.loads(r)["ids"] for r in
                                            p4.stdout.splitlines()]), want4[1])
    np.save(tmp_path / "q4.npy", q4)
    cli("search", "--index", idx, "--codes", tmp_path / "q4.npy", "-k", 5, "--query-bits", 4,
        "--ids-out", tmp_path / "ids4.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "ids4.npy"), want4[1])
    assert_clean_error(cli("search", "--index", idx, "--codes", tmp_path / "q4.npy", "-k", 5),
                       "shape")  # 4-bit codes without --query-bits

    np.save(tmp_path / "q.npy", q)
    cli("search", "--index", idx, "--codes", tmp_path / "q.npy", "-k", 5,
        "--ids-out", tmp_path / "ids.npy", "--scores-out", tmp_path / "s.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), want_i)

    gone = want_i[0]
    cli("index", "remove", idx, "--ids", ",".join(map(str, gone)), check=True)
    assert json.loads(cli("index", "info", idx).stdout)["count"] == N_BASE - 5
    p = cli("search", "--index", idx, "--codes", tmp_path / "q.npy", "-k", 5)
    assert not set(json.loads(p.stdout.splitlines()[0])["ids"]) & set(gone.tolist())
    flat = pa.array(x[gone].ravel(), type=pa.float32())
    pq.write_table(pa.table({"id": gone, "emb": pa.FixedSizeListArray.from_arrays(flat, 50)}),
                   tmp_path / "back.parquet")
    cli("encode", "--model", d / "model", tmp_path / "back.parquet", "-o", tmp_path / "back",
        "--no-progress", check=True)
    cli("index", "add", idx, tmp_path / "back", check=True)
    assert json.loads(cli("index", "info", idx).stdout)["count"] == N_BASE
    p = cli("search", "--index", idx, "--codes", tmp_path / "q.npy", "-k", 5)
    np.testing.assert_array_equal([json.loads(r)["ids"] for r in p.stdout.splitlines()],
                                  want_i)

    p = cli("eval", d / "npy", "--model", d / "model", "--num-queries", 200, check=True)
    ev = json.loads(p.stdout)
    r = {row["metric"]: row["value"] for row in ev["recall"]}
    assert 0.2 < r["R10@10"] < r["R10@100"] <= 1.0
    args = ("--model", d / "model", "--queries", d / "queries.npy", "--recall-at", 10)
    built = json.loads(cli("eval", d / "npy", *args, "--index", idx, check=True).stdout)
    fresh = json.loads(cli("eval", d / "npy", *args, check=True).stdout)
    assert built["recall"] == fresh["recall"] and 0.2 < built["recall"][0]["value"] <= 1.0


def test_resume_after_killed_job(work, tmp_path):
    d, _ = work
    args = ["encode", "--model", d / "model", d / "npy", "-o", tmp_path / "out",
            "--chunk-rows", 256, "--shard-rows", 600, "--no-progress"]
    p = bebr(*args, env={CRASH_ENV: "2"}, check=False)
    assert p.returncode == 70, p.stderr
    m = Manifest.load(tmp_path / "out")
    assert sorted(m.shards) == [0, 1] and not m.complete
    assert [f for f in os.listdir(tmp_path / "out") if f.endswith(".tmp")]  # half-written
    assert not (tmp_path / "out" / "codes-00002.npy").exists()
    assert_clean_error(cli("index", "build", tmp_path / "out", "-o", tmp_path / "i"),
                       "incomplete job (2 of 5 shards done)")
    p = bebr(*args)
    assert "3 written, 2 already complete" in p.stderr
    cli(*args[:5], tmp_path / "fresh", *args[6:], check=True)
    names = sorted(f for f in os.listdir(tmp_path / "fresh"))
    assert names == sorted(os.listdir(tmp_path / "out"))
    assert filecmp.cmpfiles(tmp_path / "out", tmp_path / "fresh", names, shallow=False)[0] \
        == names


def test_bad_inputs_give_one_line_errors(work, tmp_path):
    d, x = work
    m = d / "model"
    enc = ["encode", "--model", m, "-o", tmp_path / "o", "--no-progress"]
    assert_clean_error(bebr(*enc, tmp_path / "missing.npy", check=False),
                       "missing.npy: no such file")
    assert_clean_error(cli("encode", "--model", tmp_path / "nomodel", d / "npy", "-o",
                            tmp_path / "o"), "no such model file")
    np.save(tmp_path / "wide.npy", np.zeros((10, 64), np.float32))
    assert_clean_error(cli(*enc, tmp_path / "wide.npy"),
                       "dim 64, expected 50 (the model's input dim)")
    bad = x[:300].copy()
    bad[77, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    assert_clean_error(bebr(*enc, tmp_path / "nan.npy", check=False),
                       "nan.npy: row 77 contains NaN")
    p = cli(*enc[:-1], tmp_path / "nan.npy", "--skip-bad", "-o", tmp_path / "skip", check=True)
    assert "1 bad rows skipped" in p.stderr and len(CodeShards(tmp_path / "skip")) == 299
    np.save(tmp_path / "empty.npy", np.zeros((0, 50), np.float32))
    assert_clean_error(cli(*enc, tmp_path / "empty.npy"), "empty input")
    (tmp_path / "t.fvecs").write_bytes((d / "base.fvecs").read_bytes()[:1000])
    assert_clean_error(cli(*enc, tmp_path / "t.fvecs"), "truncated")

    # corrupted shard, corrupted manifest
    good = tmp_path / "good"
    cli("encode", "--model", m, d / "npy", "-o", good, "--shard-rows", 1000, "--no-progress",
        check=True)
    data = bytearray((good / "codes-00001.npy").read_bytes())
    data[-5] ^= 0xFF
    (good / "codes-00001.npy").write_bytes(bytes(data))
    assert_clean_error(cli("index", "build", good, "-o", tmp_path / "i"),
                       "codes-00001.npy: checksum mismatch")
    (good / "manifest.json").write_text("{ not json")
    assert_clean_error(cli("index", "build", good, "-o", tmp_path / "i"),
                       "corrupted manifest")
    assert_clean_error(cli("encode", "--model", m, d / "npy", "-o", good),
                       "corrupted manifest")

    # a different job in the same directory; a corrupted model
    out = tmp_path / "o2"
    cli("encode", "--model", m, d / "npy", "-o", out, "--no-progress", check=True)
    assert_clean_error(cli("encode", "--model", m, d / "npy", "-o", out, "--chunk-rows", 99,
                            check=False), "holds a different job")
    bad_model = tmp_path / "badmodel"
    bad_model.mkdir()
    for f in os.listdir(m):
        (bad_model / f).write_bytes((m / f).read_bytes())
    w = bad_model / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    assert_clean_error(cli("encode", "--model", bad_model, d / "npy", "-o", tmp_path / "o3",
                            check=False), "truncated")

    # model/index version and spec mismatch
    idx = tmp_path / "idx"
    cli("index", "build", out, "-o", idx, check=True)
    cli("train", d / "npy", "-o", tmp_path / "m2", "--dim", 32, "--bits", 2, "--epochs", 1,
         "--version", "v2", "--max-rows", 500, "--threads", 1, "--no-progress", check=True)
    assert_clean_error(cli("search", "--index", idx, "--model", tmp_path / "m2",
                            d / "queries.npy"),
                       "model version 'v2' is not compatible with the index's versions ['v1']")
    cli("train", d / "npy", "-o", tmp_path / "m3", "--dim", 16, "--bits", 2, "--epochs", 1,
         "--max-rows", 500, "--threads", 1, "--no-progress", check=True)
    assert_clean_error(cli("search", "--index", idx, "--model", tmp_path / "m3",
                            d / "queries.npy"), "the index holds")
    assert_clean_error(cli("search", "--index", tmp_path / "noidx", "--model", m,
                            d / "queries.npy"), "no such index file")
    (tmp_path / "junk.bebr").write_bytes(b"\0" * 100)
    p = bebr("index", "info", tmp_path / "junk.bebr", check=False)
    assert p.returncode == 1 and p.stderr.startswith("bebr: error: ")
    assert "Traceback" not in p.stderr


def test_debug_shows_traceback(tmp_path):
    p = bebr("encode", "--model", tmp_path / "m", tmp_path / "x.npy", "-o", tmp_path / "o",
             "--debug", check=False)
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_demo_runs_the_whole_job(tmp_path):
    p = cli("demo", "--words", 3000, "--dim", 32, "--epochs", 1, "--max-time", 5, "--no-progress",
            "--workdir", tmp_path, "--words-query", "king", "notawordxyz", check=True)
    out = p.stdout
    assert "king       float:" in out and "bebr :" in out
    assert "'notawordxyz': not among the 3000 words" in out
    row = [line for line in out.splitlines() if line.strip().startswith("bebr SDC")][0]
    r10, r100 = (float(v) for v in row.split()[-4:-2])
    assert 0.05 < r10 <= r100 <= 1.0
    assert len(CodeShards(tmp_path / "codes")) == 3000 - 300
    assert (tmp_path / "index.bebr").exists() and (tmp_path / "model" / "config.json").exists()


def test_removed_compatibility_commands_are_usage_errors(work, tmp_path):
    """Compatible training and the code upgrader left the CLI (tools/compat_lab.py)."""
    d, _ = work
    for argv, why in ((["upgrade", d / "codes", "--upgrader", d / "up", "-o", tmp_path / "u"],
                       "invalid choice: 'upgrade'"),
                      (["train-upgrader", "--old", d / "model"], "invalid choice"),
                      (["train", d / "npy", "-o", tmp_path / "m", "--compatible-with",
                        d / "model"], "unrecognized arguments: --compatible-with")):
        p = cli(*argv)
        assert p.returncode == 2 and why in p.stderr, p.stderr
    assert not (tmp_path / "m").exists()


def test_new_version_with_a_query_head_searches_an_old_index(work, tmp_path):
    """An independently trained v2 (bebr train) with a query head into v1's stored codes:
    bebr search uses the head for the v1 items by default, with its calibration for 4-bit
    query codes, and refuses v1 items it could only score with v2's own queries."""
    from bebr import Binarizer, train_cross_queries
    from bebr.jobs import version_tag

    d, x = work
    rng = np.random.default_rng(0)
    rot = np.linalg.qr(rng.standard_normal((50, 50)))[0].astype(np.float32)
    x_new = x[:1000] @ rot + 0.05 * rng.standard_normal((1000, 50)).astype(np.float32)
    np.save(tmp_path / "old.npy", x[:1000])
    np.save(tmp_path / "new.npy", x_new)
    bebr("train", tmp_path / "new.npy", "-o", tmp_path / "mn", "--dim", 32, "--bits", 2,
         "--epochs", 1, "--version", "v2", "--max-time", 5, "--threads", 1, "--no-progress")
    old_codes = tmp_path / "codes_v1"
    cli("encode", "--model", d / "model", tmp_path / "old.npy", "-o", old_codes,
        "--shard-rows", 400, "--no-progress", check=True)
    cli("index", "build", old_codes, "-o", tmp_path / "idx", check=True)
    v1 = Binarizer.load(d / "model")
    p = cli("search", tmp_path / "new.npy", "--index", tmp_path / "idx", "--model",
            tmp_path / "mn", "-k", 3)
    assert_clean_error(p, "model version 'v2' is not compatible with the index's versions")
    # the head: from v2's floats of the stored items and their stored v1 codes
    mn = train_cross_queries(Binarizer.load(tmp_path / "mn"), x_new,
                             CodeShards(old_codes).load_all()[0], v1.version, epochs=1,
                             members=2, negatives=256, max_time_s=5, progress=False, threads=1)
    mn.save(tmp_path / "mn")
    p = cli("search", tmp_path / "new.npy", "--index", tmp_path / "idx", "--model",
            tmp_path / "mn", "-k", 3, check=True)
    assert len(p.stdout.splitlines()) == 1000
    assert mn.config.cross_versions == [v1.version] and mn.config.cross_members == [2]
    assert "query head" in p.stderr
    # the heads' calibrations were fitted for 4-bit query codes: bebr search uses them
    tag = mn.config.cross_versions[0]  # versions are model version strings
    want = mn.encode_query_codes(x_new, 4, target=tag)
    index = bebr_index_load(tmp_path / "idx")
    cal = mn.cross_calibration(tag, index.metric)
    assert cal != (1.0, 0.0)
    assert version_tag(tag) in {version_tag(v) for v in index.versions()}
    got_s, got_i = index.search(mn.encode_query_codes(x_new, 4), 3, query_bits=4,
                                version_queries={tag: want}, version_calibration={tag: cal})
    rows = [json.loads(r) for r in p.stdout.splitlines()]
    np.testing.assert_array_equal(np.array([r["ids"] for r in rows]), got_i)
    # the head's scores come back calibrated
    np.testing.assert_allclose(np.array([r["scores"] for r in rows]), got_s, rtol=1e-5)
    # without the head, v2's own queries would score v1's codes: refused unless asked for
    assert_clean_error(cli("search", tmp_path / "new.npy", "--index", tmp_path / "idx",
                           "--model", tmp_path / "mn", "-k", 3, "--no-heads"),
                       f"holds items of versions ['{v1.version}'] that model 'v2' has no "
                       "query head for")
    p2 = cli("search", tmp_path / "new.npy", "--index", tmp_path / "idx", "--model",
             tmp_path / "mn", "-k", 3, "--no-heads", "--any-version", check=True)
    assert "query head" in p2.stderr and "(no query head)" in p2.stderr
    assert p2.stdout != p.stdout
    new_codes = tmp_path / "codes_v2"
    cli("encode", "--model", tmp_path / "mn", tmp_path / "new.npy", "-o", new_codes,
        "--no-progress", check=True)
    assert cli("index", "add", tmp_path / "idx", new_codes).returncode == 1  # same ids
    info = json.loads(cli("index", "info", tmp_path / "idx").stdout)
    assert info["count"] == 1000


def test_models_of_former_compatible_training_still_load_and_search(work, tmp_path):
    """A model file saved by bebr's former compatible training (``compatible_with`` names
    the version whose code space its codes share) loads with both loaders, and bebr search
    takes it for an index of that version without --any-version (the lineage)."""
    import torch

    from bebr import Binarizer, Encoder

    d, x = work
    torch.manual_seed(0)
    Binarizer(50, 32, 2, hidden=16, version="v2c", compatible_with="v1").save(tmp_path / "m")
    for m in (Binarizer.load(tmp_path / "m"), Encoder.load(tmp_path / "m")):
        assert (m.version, m.compatible_with) == ("v2c", "v1")
    cli("encode", "--model", d / "model", d / "queries.npy", "-o", tmp_path / "c",
        "--no-progress", check=True)
    cli("index", "build", tmp_path / "c", "-o", tmp_path / "idx", check=True)
    p = cli("search", d / "queries.npy", "--index", tmp_path / "idx", "--model", tmp_path / "m",
            "-k", 3, check=True)
    assert len(p.stdout.splitlines()) == 200 and "warning" not in p.stderr


def test_hamming_index_from_one_bit_codes(work, tmp_path):
    import torch

    from bebr import Binarizer
    from bebr.reference import hamming_search

    d, x = work
    torch.manual_seed(0)
    m = Binarizer(50, 64, 1, hidden=32, version="b1")
    m.save(tmp_path / "m1")
    cli("encode", "--model", tmp_path / "m1", d / "base.fvecs", "-o", tmp_path / "c",
        "--no-progress", check=True)
    cli("index", "build", tmp_path / "c", "-o", tmp_path / "h", "--hamming", check=True)
    assert json.loads(cli("index", "info", tmp_path / "h").stdout)["kind"] == "HammingIndex"
    p = cli("search", d / "queries.npy", "--index", tmp_path / "h", "--model", tmp_path / "m1",
            "-k", 4, check=True)
    got = np.array([json.loads(r)["ids"] for r in p.stdout.splitlines()])
    codes = m.encode(x[:N_BASE])
    want_d, want_i = hamming_search(m.encode(x[N_BASE:]), codes, np.arange(N_BASE), 4)
    np.testing.assert_array_equal(got, want_i)
    assert_clean_error(cli("index", "build", d / "npy", "-o", tmp_path / "x", "--hamming"),
                       "no manifest")


def test_training_sample_is_uniform_seeded_and_paired(tmp_path):
    from bebr.cli import _read_rows
    from bebr.io import BadRowError

    x = np.arange(1000 * 3, dtype=np.float32).reshape(1000, 3)
    np.save(tmp_path / "a.npy", x[:700])
    np.save(tmp_path / "b.npy", x[700:])
    got = _read_rows([tmp_path / "a.npy", tmp_path / "b.npy"], max_rows=50, skip_bad=False,
                     sample_seed=3)
    want = np.sort(np.random.default_rng(3).choice(1000, 50, replace=False))
    np.testing.assert_array_equal(got, x[want])  # spans both shards, same rows for any
    assert want.max() >= 700 and want.min() < 700  # input of 1000 rows: pairs stay paired
    np.testing.assert_array_equal(
        _read_rows([tmp_path / "a.npy"], max_rows=10, skip_bad=False), x[:10])
    x[812, 1] = np.nan
    np.save(tmp_path / "b.npy", x[700:])
    with pytest.raises(BadRowError, match="b.npy: row 112 contains NaN"):
        _read_rows([tmp_path / "a.npy", tmp_path / "b.npy"], max_rows=50, skip_bad=False,
                   sample_seed=3)
    kept = _read_rows([tmp_path / "a.npy", tmp_path / "b.npy"], max_rows=2000,
                      skip_bad=True, sample_seed=3)
    assert kept.shape == (999, 3) and np.isfinite(kept).all()


def test_out_of_range_options_are_refused(work, tmp_path):
    d, _ = work
    for opt, value, match in (("--dim", 0, "argument --dim: must be in [1, 65536], got 0"),
                              ("--bits", 0, "argument --bits: must be in [1, 4], got 0"),
                              ("--bits", 5, "argument --bits: must be in [1, 4], got 5"),
                              ("--epochs", -1, "argument --epochs: must be >= 1"),
                              ("--lr", "nan", "argument --lr: must be a finite number > 0"),
                              ("--max-rows", 0, "argument --max-rows: must be >= 1")):
        p = cli("train", d / "npy", "-o", tmp_path / "m", opt, value, "--no-progress")
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, p.stderr
        assert lines[0].startswith("bebr train: error: ") and match in lines[0], lines[0]
        assert not (tmp_path / "m").exists()
    p = cli("search", "--index", tmp_path / "i", "--codes", tmp_path / "q.npy", "-k", 0)
    assert p.returncode == 2 and "argument -k: must be >= 1, got 0" in p.stderr
    p = cli("encode", "--model", d / "model", d / "npy", "-o", tmp_path / "o", "--workers", 0)
    assert p.returncode == 2 and "argument --workers: must be >= 1, got 0" in p.stderr


def test_eval_uses_the_id_column(work, tmp_path):
    d, x = work
    ids = np.arange(N_BASE, dtype=np.int64) * 7 + 1000  # not row numbers
    flat = pa.array(x[:N_BASE].ravel(), type=pa.float32())
    pq.write_table(pa.table({"id": ids, "emb": pa.FixedSizeListArray.from_arrays(flat, 50)}),
                   tmp_path / "base.parquet", row_group_size=700)
    np.save(tmp_path / "base.npy", x[:N_BASE])
    for name in ("parquet", "npy"):
        cli("encode", "--model", d / "model", tmp_path / f"base.{name}", "-o",
            tmp_path / f"c_{name}", "--no-progress", check=True)
        cli("index", "build", tmp_path / f"c_{name}", "-o", tmp_path / f"i_{name}", check=True)
    args = ("--model", d / "model", "--queries", d / "queries.npy")
    got = {}
    for name in ("parquet", "npy"):
        got[name] = json.loads(cli("eval", tmp_path / f"base.{name}", *args, "--index",
                                   tmp_path / f"i_{name}", check=True).stdout)["recall"]
    assert got["parquet"] == got["npy"] and got["npy"][0]["value"] > 0.2
    held = [json.loads(cli("eval", tmp_path / f"base.{name}", "--model", d / "model",
                           "--num-queries", 100, check=True).stdout)["recall"]
            for name in ("parquet", "npy")]
    assert held[0] == held[1]
    # an index of other ids than BASE's is refused, not scored 0
    assert_clean_error(cli("eval", tmp_path / "base.npy", *args, "--index",
                           tmp_path / "i_parquet"), "which is not an id of BASE")
    assert_clean_error(cli("eval", tmp_path / "base.npy", *args, "--index",
                           tmp_path / "i_npy", "--max-rows", 100),
                       "holds 3000 items but BASE has 100 rows")


def test_search_codes_of_another_spec_are_refused(work, tmp_path):
    import torch

    from bebr import Binarizer

    d, x = work
    torch.manual_seed(0)
    Binarizer(50, 16, 4, hidden=16, version="w").save(tmp_path / "m16x4")  # 8 bytes, as 32x2
    cli("encode", "--model", d / "model", d / "base.fvecs", "-o", tmp_path / "c", "--no-progress",
        check=True)
    cli("encode", "--model", tmp_path / "m16x4", d / "queries.npy", "-o", tmp_path / "q16",
        "--no-progress", check=True)
    idx = tmp_path / "idx"
    cli("index", "build", tmp_path / "c", "-o", idx, check=True)
    assert_clean_error(cli("search", "--index", idx, "--codes", tmp_path / "q16"),
                       "codes are CodeSpec(dim=16, bits=4), the queries must be "
                       "CodeSpec(dim=32, bits=2)")
    assert_clean_error(cli("index", "add", idx, tmp_path / "q16"),
                       "codes are CodeSpec(dim=16, bits=4), the index holds "
                       "CodeSpec(dim=32, bits=2)")
    codes, _ = CodeShards(tmp_path / "q16").load_all()
    np.save(tmp_path / "q16.npy", codes)
    assert_clean_error(cli("search", "--index", idx, "--codes", tmp_path / "q16.npy",
                           "--codes-spec", "16x4"),
                       "--codes-spec 16x4: the queries must be 32x2 codes")
    ok = cli("search", "--index", idx, "--codes", tmp_path / "q16.npy", "--codes-spec", "32x2",
             "-k", 2, check=True)  # the byte width is all a bare .npy shows
    assert len(ok.stdout.splitlines()) == 200
    np.save(tmp_path / "q9.npy", np.zeros((3, 9), np.uint8))
    assert_clean_error(cli("search", "--index", idx, "--codes", tmp_path / "q9.npy"),
                       "must have shape (n, 8)")
    p = cli("search", "--index", idx, "--codes", tmp_path / "q9.npy", "--codes-spec", "32")
    assert p.returncode == 2 and "expected DIMxBITS such as 32x2" in p.stderr
    assert_clean_error(cli("search", "--index", idx, "--model", d / "model", d / "queries.npy",
                           "--codes-spec", "32x2"), "--codes-spec is only used with --codes")


def test_unreadable_npy_gives_one_line(work, tmp_path):
    d, _ = work
    cli("encode", "--model", d / "model", d / "base.fvecs", "-o", tmp_path / "c", "--no-progress",
        check=True)
    cli("index", "build", tmp_path / "c", "-o", tmp_path / "idx", check=True)
    (tmp_path / "zero.npy").write_bytes(b"")
    np.save(tmp_path / "obj.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    for f in ("zero.npy", "obj.npy"):
        for p in (bebr("search", "--index", tmp_path / "idx", "--codes", tmp_path / f,
                       check=False),
                  bebr("search", "--index", tmp_path / "idx", "--model", d / "model",
                       tmp_path / f, check=False),
                  cli("encode", "--model", d / "model", tmp_path / f, "-o", tmp_path / "o"),
                  cli("index", "remove", tmp_path / "idx", "--ids-file", tmp_path / f)):
            assert_clean_error(p, f"{f}: not a readable .npy file")


def test_failed_encode_suggests_skip_bad_and_the_rerun_works(work, tmp_path):
    d, x = work
    bad = x[:N_BASE].copy()
    bad[[1500, 2600], 4] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    args = ["encode", "--model", d / "model", tmp_path / "nan.npy", "-o", tmp_path / "o",
            "--shard-rows", 1000, "--no-progress"]
    assert_clean_error(cli(*args), "nan.npy: row 1500 contains NaN")
    assert "pass --skip-bad" in cli(*args).stderr
    p = cli(*args, "--skip-bad", check=True)
    assert "2998 vectors" in p.stderr and "2 bad rows skipped" in p.stderr
    assert "2 written, 1 already complete" in p.stderr


def test_index_build_names_the_shard_with_refused_ids(work, tmp_path):
    d, _ = work
    for name in ("a", "b"):  # both directories hold ids 0..2999
        cli("encode", "--model", d / "model", d / "base.fvecs", "-o", tmp_path / name,
            "--no-progress", "--shard-rows", 2000, check=True)
    assert_clean_error(cli("index", "build", tmp_path / "a", tmp_path / "b", "-o",
                           tmp_path / "i", "-q"), "b/ids-00000.npy (shard 0): ")
    dup = tmp_path / "dup.parquet"
    flat = pa.array(np.ones(3 * 50, np.float32), type=pa.float32())
    pq.write_table(pa.table({"id": np.array([5, 6, 5], np.int64),
                             "emb": pa.FixedSizeListArray.from_arrays(flat, 50)}), dup)
    assert_clean_error(cli("encode", "--model", d / "model", dup, "-o", tmp_path / "o",
                           "--no-progress"),
                       "dup.parquet (id column 'id'): rows 0 and 2 have the same id 5")


def test_uncalibrated_head_model_warns_on_one_line(work, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from bebr import Binarizer
    from bebr.fileio import header_digest, sha256_file

    d, _ = work
    torch.manual_seed(0)
    m = tmp_path / "legacy"
    Binarizer(50, 32, 2, hidden=16, version="v2", cross_versions=["v1"], cross_hidden=8,
              cross_depth=1).save(m)
    state = load_file(str(m / "model.safetensors"))
    del state["cross.0.calibration"]  # written before heads were calibrated
    save_file(state, str(m / "model.safetensors"))
    cfg = json.loads((m / "config.json").read_text())
    cfg.update(weights_sha256=sha256_file(m / "model.safetensors"),
               weights_bytes=os.path.getsize(m / "model.safetensors"))
    cfg["header_sha256"] = header_digest(cfg)
    (m / "config.json").write_text(json.dumps(cfg))
    p = cli("encode", "--model", m, d / "queries.npy", "-o", tmp_path / "o", "--no-progress",
            check=True)
    warn = [line for line in p.stderr.splitlines() if line.startswith("bebr: warning: ")]
    assert len(warn) == 1 and "versions ['v1'] have no score calibration" in warn[0]
