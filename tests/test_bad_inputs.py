"""The bad-input tally (issue 15): a table of bad inputs over the CLI and the Python API.

Every CLI case must exit 1 (input errors) or 2 (usage errors: argparse) with exactly one
stderr line ``bebr...: error: ...`` naming what was wrong, and no traceback; every API case
must raise one of the documented exception types (TypeError, ValueError, IndexError,
bebr.fileio.CorruptFileError, FileNotFoundError) with a message naming the argument. The test
prints the tally (tried / clear errors / vague errors / tracebacks / crashes / silent wrong
answers) and asserts that only clear errors occurred. The CLI cases run ``bebr.cli.main`` in
this process (the code a subprocess runs); a few also run as real processes, where a crash
(a signal, a status other than 0, 1, 2) would show.
"""

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import bebr
from bebr import Binarizer, CodeSpec, HammingIndex, Index
from bebr.cli import main
from bebr.fileio import CorruptFileError, header_digest
from bebr.io import CodeShards, Manifest, open_inputs, open_source, read_vecs, write_vecs
from bebr.jobs import encode_shards, load_model
from bebr.modelfile import write_model_dir

D, DIM, BITS = 16, 30, 2       # dim 30: the codes have padding bits
API_ERRORS = (TypeError, ValueError, IndexError, FileNotFoundError)  # CorruptFileError: ValueError


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny model, its code shards and index, a model file of another kind, and a zoo of
    bad files."""
    t = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, D)).astype(np.float32)
    np.save(t / "x.npy", x)
    np.save(t / "q.npy", x[:20] + 0.01)
    torch.manual_seed(0)
    model = Binarizer(D, DIM, BITS, hidden=16, version="v1")
    model.save(t / "m")
    encode_shards(t / "m", t / "x.npy", t / "c", progress=False, shard_rows=120)
    idx = Index(model.spec)
    codes, ids = CodeShards(t / "c").load_all()
    idx.add(codes, ids, version="v1")
    idx.save(t / "idx.bebr")
    # a sound model directory of another kind: a code upgrader as bebr saved them before the
    # upgrader became an ablation in tools/compat_lab.py
    write_model_dir(t / "up", torch.nn.Linear(DIM, DIM), "code_upgrader",
                    {"format": "bebr.upgrader", "format_version": 1, "model": "code_upgrader",
                     "config": {}})
    torch.manual_seed(1)
    Binarizer(D, 15, 4, hidden=16, version="w").save(t / "m15x4")  # 8 bytes per code too
    encode_shards(t / "m15x4", t / "x.npy", t / "c15x4", progress=False)

    b = t / "bad"
    b.mkdir()
    raw = (t / "x.npy").read_bytes()
    (b / "zero.npy").write_bytes(b"")
    (b / "hdr.npy").write_bytes(raw[:30])
    (b / "data.npy").write_bytes(raw[:300])
    (b / "text.npy").write_bytes(b"definitely not numpy\n" * 20)
    np.save(b / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(b / "1d.npy", x[0])
    np.save(b / "3d.npy", x[:8].reshape(2, 4, D))
    np.save(b / "wide.npy", np.zeros((5, D + 3), np.float32))
    np.save(b / "complex.npy", x[:5].astype(np.complex64))
    np.save(b / "str.npy", np.array([["a"] * D] * 3))
    np.save(b / "bool.npy", np.ones((4, D), bool))
    np.save(b / "rows0.npy", np.zeros((0, D), np.float32))
    nan = x[:50].copy()
    nan[7, 3] = np.nan
    np.save(b / "nan.npy", nan)
    inf = x[:50].copy()
    inf[9, 0] = np.inf
    np.save(b / "inf.npy", inf)
    write_vecs(b / "ok.fvecs", x[:20])
    (b / "trunc.fvecs").write_bytes((b / "ok.fvecs").read_bytes()[:-7])
    (b / "dimhdr.fvecs").write_bytes(np.int32(-5).tobytes() + b"\0" * 40)
    (b / "x.ivecs").write_bytes(np.int32(2).tobytes() + b"\0" * 8)
    (b / "x.txt").write_text("1 2 3\n")
    (b / "junk.parquet").write_bytes(b"PAR1 not really")
    pq.write_table(pa.table({"a": [1, 2, 3]}), b / "nolist.parquet")
    flat = pa.array(x[:4].ravel(), type=pa.float32())
    pq.write_table(pa.table({"id": ["a", "b", "c", "d"],
                             "emb": pa.FixedSizeListArray.from_arrays(flat, D)}),
                   b / "strid.parquet")
    pq.write_table(pa.table({"emb": pa.array([[1.0] * D, [1.0] * (D - 1)])}),
                   b / "ragged.parquet")
    pq.write_table(pa.table({"id": [1, 1], "emb": pa.array([[1.0] * D, [2.0] * D])}),
                   b / "dupid.parquet")
    pq.write_table(pa.table({"id": [3, -4], "emb": pa.array([[1.0] * D, [2.0] * D])}),
                   b / "negid.parquet")
    (b / "emptydir").mkdir()
    # code queries
    np.save(b / "codes_float.npy", codes[:3].astype(np.float32))
    np.save(b / "codes_wide.npy", np.zeros((3, 9), np.uint8))
    np.save(b / "codes_1d.npy", np.zeros(5, np.uint8))
    pad = codes[:3].copy()
    pad[:, 3] |= 0x80  # a padding bit past dim 30 (plane 0, last byte)
    np.save(b / "codes_pad.npy", pad)
    # ids files
    np.save(b / "ids_float.npy", np.array([1.5, 2.0]))
    # model directories
    _copy_dir(t / "m", b / "m_badjson")
    (b / "m_badjson" / "config.json").write_text("{ nope")
    _copy_dir(t / "m", b / "m_nokey")
    _edit_json(b / "m_nokey" / "config.json", lambda h: h["config"].pop("in_dim"))
    _copy_dir(t / "m", b / "m_edited")
    _edit_json(b / "m_edited" / "config.json", lambda h: h.update(version="v9"), seal=False)
    _copy_dir(t / "m", b / "m_trunc")
    w = b / "m_trunc" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-9])
    _copy_dir(t / "m", b / "m_flip")
    w = b / "m_flip" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0x40
    w.write_bytes(bytes(data))
    (b / "m_empty").mkdir()
    (b / "m_file").write_text("x")
    # code-shard directories
    _copy_dir(t / "c", b / "c_json")
    (b / "c_json" / "manifest.json").write_text("[1, 2")
    _copy_dir(t / "c", b / "c_flip")
    f = b / "c_flip" / "codes-00001.npy"
    data = bytearray(f.read_bytes())
    data[-3] ^= 1
    f.write_bytes(bytes(data))
    _copy_dir(t / "c", b / "c_gone")
    os.unlink(b / "c_gone" / "ids-00000.npy")
    _copy_dir(t / "c", b / "c_escape")
    _edit_json(b / "c_escape" / "manifest.json",
               lambda m: m["shards"][0].update(codes="../c/codes-00000.npy"))
    _copy_dir(t / "c", b / "c_incomplete")
    _edit_json(b / "c_incomplete" / "manifest.json",
               lambda m: m.update(shards=m["shards"][:1], complete=False,
                                  count=m["shards"][0]["count"]))
    _copy_dir(t / "c", b / "c_count")
    _edit_json(b / "c_count" / "manifest.json", lambda m: m["shards"][0].update(count="120"))
    _copy_dir(t / "c", b / "c_spec")
    _edit_json(b / "c_spec" / "manifest.json", lambda m: m.update(spec={"dim": 0, "bits": 2}))
    _copy_dir(t / "c", b / "c_edited")
    _edit_json(b / "c_edited" / "manifest.json", lambda m: m["spec"].update(dim=29),
               seal=False)
    _copy_dir(t / "c", b / "c_version")
    _edit_json(b / "c_version" / "manifest.json", lambda m: m.update(format_version=99))
    # index files
    (b / "zero.bebr").write_bytes(b"")
    (b / "junk.bebr").write_bytes(b"\x00" * 64)
    (b / "trunc.bebr").write_bytes((t / "idx.bebr").read_bytes()[:100])
    return t, b, model, x


def _copy_dir(src, dst):
    dst.mkdir()
    for f in os.listdir(src):
        (dst / f).write_bytes((src / f).read_bytes())


def _edit_json(path, edit, seal=True):
    """Edit a JSON header; ``seal``: with a matching header_sha256 (a crafted file, so that
    the field checks behind the checksum are reached)."""
    d = json.loads(path.read_text())
    edit(d)
    if seal:
        d["header_sha256"] = header_digest(d)
    path.write_text(json.dumps(d))


# ------------------------------------------------------------------ the table
BAD_EMBEDDINGS = [  # (file in bad/, what the one error line must say)
    ("missing.npy", "no such file"), ("zero.npy", "not a readable .npy file"),
    ("hdr.npy", "not a readable .npy file"), ("data.npy", "not a readable .npy file"),
    ("text.npy", "not a readable .npy file"), ("obj.npy", "not a readable .npy file"),
    ("1d.npy", "must be a 2-D array"), ("3d.npy", "must be a 2-D array"),
    ("wide.npy", "dim 19, expected 16"), ("complex.npy", "must be numeric"),
    ("str.npy", "must be numeric"), ("bool.npy", "must be numeric"),
    ("rows0.npy", "empty input"), ("nan.npy", "row 7 contains NaN"),
    ("inf.npy", "row 9 contains inf"), ("trunc.fvecs", "truncated"),
    ("dimhdr.fvecs", "invalid dimension header -5"), ("x.ivecs", "holds integer ids"),
    ("x.txt", "unknown input format '.txt'"), ("junk.parquet", "not a readable parquet"),
    ("nolist.parquet", "no list<float>"), ("strid.parquet", "must be integers"),
    ("ragged.parquet", "ragged"), ("emptydir", "holds no input shards"),
    ("nomatch*.npy", "glob matches no files"),
]
BAD_MODELS = [("nomodel", "no such model file"), ("m_badjson", "not valid JSON"),
              ("m_nokey", "bad header field"), ("m_trunc", "truncated or replaced"),
              ("m_flip", "SHA-256 mismatch"), ("m_empty", "config.json"),
              ("m_file", "is not a saved Binarizer directory"),
              ("m_edited", "header checksum mismatch")]
BAD_SHARDS = [("noshards", "no such code-shard directory"), ("emptydir", "no manifest"),
              ("c_json", "corrupted manifest"), ("c_flip", "checksum mismatch"),
              ("c_gone", "ids-00000.npy: missing"), ("c_escape", "must lie in the manifest"),
              ("c_incomplete", "incomplete job"), ("c_count", "corrupted manifest"),
              ("c_spec", "CodeSpec.dim must be in"), ("c_version", "format version 99"),
              ("c_edited", "header checksum mismatch")]
BAD_INDEXES = [("noindex.bebr", "no such index file"), ("zero.bebr", "zero.bebr"),
               ("junk.bebr", "junk.bebr"), ("trunc.bebr", "trunc.bebr")]
BAD_CODES = [("zero.npy", "not a readable .npy file"), ("obj.npy", "not a readable .npy"),
             ("codes_float.npy", "must be uint8"), ("codes_wide.npy", "must have shape (n, 8)"),
             ("codes_1d.npy", "must have shape (n, 8)"), ("codes_pad.npy", "padding bits"),
             ("3d.npy", "must be uint8"), ("missing.npy", "no such file")]


def cli_cases(t, b):
    """(name, argv, text the error line must contain)."""
    m, c, idx, q = t / "m", t / "c", t / "idx.bebr", t / "q.npy"
    out = t / "out"
    cases = []
    for f, why in BAD_EMBEDDINGS:
        cases.append((f"encode {f}", ["encode", "--model", m, b / f, "-o", out / f,
                                      "--no-progress"], why))
        if f != "wide.npy":  # any dim trains
            cases.append((f"train {f}", ["train", b / f, "-o", out / f, "--no-progress"], why))
        cases.append((f"eval {f}", ["eval", b / f, "--model", m], why))
        cases.append((f"search {f}", ["search", b / f, "--index", idx, "--model", m], why))
    for f, why in BAD_MODELS:
        cases.append((f"encode model {f}", ["encode", "--model", b / f, t / "x.npy", "-o",
                                            out / f], why))
        cases.append((f"search model {f}", ["search", q, "--index", idx, "--model", b / f], why))
    for f, why in BAD_SHARDS:
        cases.append((f"index build {f}", ["index", "build", b / f, "-o", out / f], why))
        cases.append((f"search codes {f}", ["search", b / f, "--index", idx, "--codes"],
                      "no such file" if f == "noshards" else why))
    for f, why in BAD_INDEXES:
        cases.append((f"index info {f}", ["index", "info", b / f], why))
        cases.append((f"search index {f}", ["search", q, "--index", b / f, "--model", m], why))
    for f, why in BAD_CODES:
        cases.append((f"search codes {f}", ["search", b / f, "--index", idx, "--codes"], why))
    usage = [  # argparse: exit 2
        ("train --dim 0", ["train", t / "x.npy", "-o", out / "d0", "--dim", 0], "--dim"),
        ("train --dim -3", ["train", t / "x.npy", "-o", out / "d0", "--dim", -3], "--dim"),
        ("train --dim 70000", ["train", t / "x.npy", "-o", out / "d0", "--dim", 70000],
         "--dim"),
        ("train --bits 0", ["train", t / "x.npy", "-o", out / "b0", "--bits", 0], "--bits"),
        ("train --bits 5", ["train", t / "x.npy", "-o", out / "b0", "--bits", 5], "--bits"),
        ("train --bits two", ["train", t / "x.npy", "-o", out / "b0", "--bits", "two"],
         "--bits"),
        ("train --epochs 0", ["train", t / "x.npy", "-o", out / "e", "--epochs", 0], "--epochs"),
        ("train --batch-size 0", ["train", t / "x.npy", "-o", out / "e", "--batch-size", 0],
         "--batch-size"),
        ("train --lr -1", ["train", t / "x.npy", "-o", out / "e", "--lr", -1], "--lr"),
        ("train --lr inf", ["train", t / "x.npy", "-o", out / "e", "--lr", "inf"], "--lr"),
        ("train --max-rows 0", ["train", t / "x.npy", "-o", out / "e", "--max-rows", 0],
         "--max-rows"),
        ("train --threads 0", ["train", t / "x.npy", "-o", out / "e", "--threads", 0],
         "--threads"),
        ("train --seed -1", ["train", t / "x.npy", "-o", out / "e", "--seed", -1], "--seed"),
        ("train no -o", ["train", t / "x.npy"], "-o/--out"),
        ("encode --chunk-rows 0", ["encode", "--model", m, t / "x.npy", "-o", out / "e",
                                   "--chunk-rows", 0], "--chunk-rows"),
        ("encode --shard-rows 0", ["encode", "--model", m, t / "x.npy", "-o", out / "e",
                                   "--shard-rows", 0], "--shard-rows"),
        ("encode --workers 0", ["encode", "--model", m, t / "x.npy", "-o", out / "e",
                                "--workers", 0], "--workers"),
        ("encode --threads -2", ["encode", "--model", m, t / "x.npy", "-o", out / "e",
                                 "--threads", -2], "--threads"),
        ("encode --engine spark", ["encode", "--model", m, t / "x.npy", "-o", out / "e",
                                   "--engine", "spark"], "--engine"),
        ("encode no --model", ["encode", t / "x.npy", "-o", out / "e"], "--model"),
        ("search -k 0", ["search", q, "--index", idx, "--model", m, "-k", 0], "-k"),
        ("search -k -5", ["search", q, "--index", idx, "--model", m, "-k", -5], "-k"),
        ("search -k ten", ["search", q, "--index", idx, "--model", m, "-k", "ten"], "-k"),
        ("search --threads 0", ["search", q, "--index", idx, "--model", m, "--threads", 0],
         "--threads"),
        ("search --query-bits 9", ["search", q, "--index", idx, "--model", m,
                                   "--query-bits", 9], "--query-bits"),
        ("search --codes-spec 32", ["search", q, "--index", idx, "--codes", "--codes-spec",
                                    "32"], "--codes-spec"),
        ("search --codes-spec 32x9", ["search", q, "--index", idx, "--codes", "--codes-spec",
                                      "32x9"], "--codes-spec"),
        ("eval -k 0", ["eval", t / "x.npy", "--model", m, "-k", 0], "-k"),
        ("eval --num-queries 0", ["eval", t / "x.npy", "--model", m, "--num-queries", 0],
         "--num-queries"),
        ("eval --recall-at 0", ["eval", t / "x.npy", "--model", m, "--recall-at", 0],
         "--recall-at"),
        ("eval --metric l2", ["eval", t / "x.npy", "--model", m, "--metric", "l2"], "--metric"),
        ("index build --metric l2", ["index", "build", c, "-o", out / "i", "--metric", "l2"],
         "--metric"),
        ("demo --words 0", ["demo", "--words", 0], "--words"),
        ("demo --bits 9", ["demo", "--bits", 9], "--bits"),
        ("unknown command", ["frobnicate"], "invalid choice"),
        ("index unknown action", ["index", "frob"], "invalid choice"),
    ]
    for cmd in (["train", t / "x.npy", "-o", out / "u"], ["encode", "--model", m, t / "x.npy",
                                                          "-o", out / "u"],
                ["search", q, "--index", idx, "--model", m], ["eval", t / "x.npy", "--model", m],
                ["index", "info", idx], ["index", "build", c, "-o", out / "u"]):
        usage.append((f"{cmd[0]} --bogus", cmd + ["--bogus"], "unrecognized arguments: --bogus"))
    cases += usage
    cases += [  # checks of the commands themselves: exit 1
        ("search model and codes", ["search", q, "--index", idx, "--model", m, "--codes"],
         "exactly one"),
        ("search neither", ["search", q, "--index", idx], "exactly one"),
        ("search other-spec shards", ["search", t / "c15x4", "--index", idx, "--codes"],
         "codes are CodeSpec(dim=15, bits=4), the queries must be CodeSpec(dim=30, bits=2)"),
        ("search --codes-spec other", ["search", q, "--index", idx, "--codes",
                                       "--codes-spec", "15x4"], "--codes-spec 15x4"),
        ("search --codes-spec no codes", ["search", q, "--index", idx, "--model", m,
                                          "--codes-spec", "30x2"], "only used with --codes"),
        ("search model of other spec", ["search", q, "--index", idx, "--model", t / "m15x4"],
         "makes CodeSpec(dim=15, bits=4) codes, the index holds"),
        ("search queries wrong dim", ["search", b / "wide.npy", "--index", idx, "--model", m],
         "dim 19, expected 16"),
        ("index add other spec", ["index", "add", idx, t / "c15x4"],
         "codes are CodeSpec(dim=15, bits=4), the index holds CodeSpec(dim=30, bits=2)"),
        ("index add same ids", ["index", "add", idx, c], "(shard 0): "),
        ("index build --hamming 2-bit", ["index", "build", c, "-o", out / "h", "--hamming"],
         "--hamming needs 1-bit codes"),
        ("index remove bad --ids", ["index", "remove", idx, "--ids", "1,x"],
         "--ids must be comma-separated integers"),
        ("index remove neither", ["index", "remove", idx], "exactly one of --ids or --ids-file"),
        ("index remove both", ["index", "remove", idx, "--ids", "1", "--ids-file",
                               b / "ids_float.npy"], "exactly one of --ids or --ids-file"),
        ("index remove float ids", ["index", "remove", idx, "--ids-file", b / "ids_float.npy"],
         "ids must be integers"),
        ("index remove zero ids", ["index", "remove", idx, "--ids-file", b / "zero.npy"],
         "not a readable .npy file"),
        ("encode dup ids", ["encode", "--model", m, b / "dupid.parquet", "-o", out / "dup",
                            "--no-progress"], "rows 0 and 1 have the same id 1"),
        ("encode negative ids", ["encode", "--model", m, b / "negid.parquet", "-o",
                                 out / "neg", "--no-progress"], "row 1 has id -4"),
        ("encode ids mixed", ["encode", "--model", m, t / "x.npy", b / "dupid.parquet", "-o",
                              out / "mix"], "some input shards have an id column"),
        ("encode model is upgrader", ["encode", "--model", t / "up", t / "x.npy", "-o",
                                      out / "upm"], "not a bebr Binarizer header"),
        ("eval -k too big", ["eval", t / "x.npy", "--model", m, "-k", 500, "--num-queries", 10],
         "-k 500 is larger than the base"),
        ("eval num-queries too big", ["eval", t / "x.npy", "--model", m, "--num-queries", 200],
         "--num-queries 200 leaves no base rows"),
        ("eval index without queries", ["eval", t / "x.npy", "--model", m, "--index", idx],
         "--index needs --queries"),
        ("eval index of a subset", ["eval", t / "x.npy", "--model", m, "--index", idx,
                                    "--queries", q, "--max-rows", 50],
         "holds 200 items but BASE has 50 rows"),
        ("bench unknown study", ["bench", "nosuchstudy"], "nosuchstudy"),
    ]
    return cases


def api_cases(t, b, model, x):
    """(name, zero-argument callable, text the message must contain)."""
    spec = model.spec
    idx = Index(spec)
    codes, ids = CodeShards(t / "c").load_all()
    idx.add(codes, ids)
    ham = HammingIndex(64)
    ham.add(np.zeros((3, 8), np.uint8), np.arange(3))
    c = codes[:4]
    cases = [
        ("CodeSpec dim 0", lambda: CodeSpec(0, 2), "CodeSpec.dim"),
        ("CodeSpec dim -1", lambda: CodeSpec(-1, 2), "CodeSpec.dim"),
        ("CodeSpec bits 0", lambda: CodeSpec(8, 0), "CodeSpec.bits"),
        ("CodeSpec bits 8", lambda: CodeSpec(8, 8), "CodeSpec.bits"),
        ("CodeSpec dim str", lambda: CodeSpec("8", 2), "CodeSpec.dim"),
        ("CodeSpec dim float", lambda: CodeSpec(8.0, 2), "CodeSpec.dim"),
        ("CodeSpec bits bool", lambda: CodeSpec(8, True), "CodeSpec.bits"),
        ("CodeSpec.from_dict extra", lambda: CodeSpec.from_dict({"dim": 8, "bits": 2, "x": 1}),
         "code spec"),
        ("CodeSpec.from_dict list", lambda: CodeSpec.from_dict([8, 2]), "code spec"),
        ("pack float levels", lambda: spec.pack(np.zeros((2, DIM))), "levels"),
        ("pack wrong shape", lambda: spec.pack(np.zeros((2, DIM + 1), np.int64)), "levels"),
        ("pack out of range", lambda: spec.pack(np.full((2, DIM), 4)), "levels"),
        ("unpack float", lambda: spec.unpack(c.astype(np.float32)), "packed"),
        ("unpack wrong width", lambda: spec.unpack(c[:, :5]), "packed"),
        ("check_packed padding", lambda: spec.check_packed(np.load(b / "codes_pad.npy")),
         "padding bits"),
        ("quantize_angle NaN", lambda: spec.quantize_angle(np.full((1, DIM), np.nan)),
         "values"),
        ("Index spec str", lambda: Index("30x2"), "spec"),
        ("Index metric", lambda: Index(spec, metric="l2"), "metric"),
        ("Index bits 7", lambda: Index(CodeSpec(8, 7)), "bits"),
        ("add float codes", lambda: Index(spec).add(c.astype(np.float32), np.arange(4)),
         "codes"),
        ("add wrong width", lambda: Index(spec).add(c[:, :7], np.arange(4)), "packed"),
        ("add 3-d codes", lambda: Index(spec).add(c[None], np.arange(4)), "packed"),
        ("add ids length", lambda: Index(spec).add(c, np.arange(3)), "ids"),
        ("add ids float", lambda: Index(spec).add(c, np.arange(4.0)), "ids"),
        ("add ids negative", lambda: Index(spec).add(c, np.array([0, 1, -1, 3])), "ids"),
        ("add ids duplicate", lambda: Index(spec).add(c, np.array([0, 1, 1, 3])), "ids"),
        ("add ids held", lambda: idx.add(c, ids[:4]), "already in the index"),
        ("add padding", lambda: Index(spec).add(np.load(b / "codes_pad.npy"), np.arange(3)),
         "padding"),
        ("search k 0", lambda: idx.search(c, 0), "k"),
        ("search k -1", lambda: idx.search(c, -1), "k"),
        ("search k float", lambda: idx.search(c, 2.5), "k"),
        ("search k str", lambda: idx.search(c, "3"), "k"),
        ("search threads 0", lambda: idx.search(c, 3, threads=0), "threads"),
        ("search threads -1", lambda: idx.search(c, 3, threads=-1), "threads"),
        ("search float queries", lambda: idx.search(c.astype(np.float32), 3), "queries"),
        ("search wrong width", lambda: idx.search(c[:, :6], 3), "queries"),
        ("search query_bits 9", lambda: idx.search(c, 3, query_bits=9), "query_bits"),
        ("search query_bits 0", lambda: idx.search(c, 3, query_bits=0), "query_bits"),
        ("remove float ids", lambda: idx.remove(np.array([1.5])), "ids"),
        ("Hamming dim 0", lambda: HammingIndex(0), "dim"),
        ("Hamming add width", lambda: ham.add(np.zeros((2, 4), np.uint8), np.arange(2)),
         "packed"),
        ("Hamming add dtype", lambda: ham.add(np.zeros((2, 8), np.int32), np.arange(10, 12)),
         "codes"),
        ("Hamming search k 0", lambda: ham.search(np.zeros((1, 8), np.uint8), 0), "k"),
        ("Hamming search width", lambda: ham.search(np.zeros((1, 7), np.uint8), 2), "queries"),
        ("Binarizer in_dim 0", lambda: Binarizer(0, 8, 2), "in_dim"),
        ("Binarizer dim 0", lambda: Binarizer(8, 0, 2), "dim"),
        ("Binarizer bits 5", lambda: Binarizer(8, 8, 5), "bits"),
        ("Binarizer hidden 0", lambda: Binarizer(8, 8, 2, hidden=0), "hidden"),
        ("Binarizer dim float", lambda: Binarizer(8, 8.0, 2), "dim"),
        ("encode wrong dim", lambda: model.encode(np.zeros((3, D + 1), np.float32)), "in_dim"),
        ("encode 1-d", lambda: model.encode(np.zeros(D, np.float32)), "2-d"),
        ("encode str", lambda: model.encode(np.array([["a"] * D])), "numeric"),
        ("encode NaN", lambda: model.encode(np.full((2, D), np.nan, np.float32)), "NaN"),
        ("encode inf", lambda: model.encode(np.full((2, D), np.inf, np.float32)), "inf"),
        ("encode batch 0", lambda: model.encode(x[:3], batch_size=0), "batch_size"),
        ("encode_query_codes bits 8", lambda: model.encode_query_codes(x[:3], 8), "bits"),
        ("encode_query_codes target", lambda: model.encode_query_codes(x[:3], target="zz"),
         "head"),
        ("cross_calibration metric", lambda: model.cross_calibration("v0", "l2"), "metric"),
        ("train dim 0", lambda: bebr.train_binarizer(x, 0, 2, progress=False), "dim"),
        ("train bits 0", lambda: bebr.train_binarizer(x, 8, 0, progress=False), "bits"),
        ("train bits 5", lambda: bebr.train_binarizer(x, 8, 5, progress=False), "bits"),
        ("train NaN", lambda: bebr.train_binarizer(np.load(b / "nan.npy"), 8, 2,
                                                   progress=False), "NaN"),
        ("train empty", lambda: bebr.train_binarizer(np.zeros((0, D), np.float32), 8, 2,
                                                     progress=False), "rows"),
        ("train 1-d", lambda: bebr.train_binarizer(x[0], 8, 2, progress=False), "2-d"),
        ("train str", lambda: bebr.train_binarizer(np.array([["a"] * D] * 4), 8, 2,
                                                   progress=False), "numeric"),
        ("train epochs 0", lambda: bebr.train_binarizer(x, 8, 2, epochs=0, progress=False),
         "epochs"),
        ("train threads 0", lambda: bebr.train_binarizer(x, 8, 2, threads=0, progress=False),
         "threads"),
        ("train lr -1", lambda: bebr.train_binarizer(x, 8, 2, lr=-1.0, progress=False),
         "learning rate"),
        ("train batch 0", lambda: bebr.train_binarizer(x, 8, 2, batch_size=0, progress=False),
         "batch_size"),
        ("Binarizer.load missing", lambda: Binarizer.load(t / "nope"), "nope"),
        ("Binarizer.load file", lambda: Binarizer.load(b / "m_file"), "m_file"),
        ("Binarizer.load json", lambda: Binarizer.load(b / "m_badjson"), "not valid JSON"),
        ("Binarizer.load key", lambda: Binarizer.load(b / "m_nokey"), "bad header field"),
        ("Binarizer.load trunc", lambda: Binarizer.load(b / "m_trunc"), "truncated"),
        ("Binarizer.load flip", lambda: Binarizer.load(b / "m_flip"), "SHA-256"),
        ("Binarizer.load empty dir", lambda: Binarizer.load(b / "m_empty"), "config.json"),
        ("Binarizer.load upgrader", lambda: Binarizer.load(t / "up"), "Binarizer header"),
        ("jobs.load_model upgrader", lambda: load_model(t / "up", "upgrader"),
         "unknown model kind 'upgrader'"),
        ("encode_shards chunk 0", lambda: encode_shards(model, t / "x.npy", t / "j0",
                                                        chunk_rows=0, progress=False),
         "chunk_rows"),
        ("encode_shards shard 0", lambda: encode_shards(model, t / "x.npy", t / "j1",
                                                        shard_rows=0, progress=False),
         "shard_rows"),
        ("encode_shards workers 0", lambda: encode_shards(t / "m", t / "x.npy", t / "j2",
                                                          workers=0, progress=False), "workers"),
        ("encode_shards engine", lambda: encode_shards(model, t / "x.npy", t / "j3",
                                                       engine="spark", progress=False),
         "engine"),
        ("encode_shards object workers", lambda: encode_shards(model, t / "x.npy", t / "j4",
                                                               workers=2, progress=False),
         "path"),
        ("encode_shards no input", lambda: encode_shards(model, [], t / "j5", progress=False),
         "no input"),
        ("encode_shards NaN", lambda: encode_shards(model, b / "nan.npy", t / "j6",
                                                    progress=False), "row 7"),
        ("encode_shards dup ids", lambda: encode_shards(model, b / "dupid.parquet", t / "j7",
                                                        progress=False), "same id 1"),
        ("encode_shards missing model", lambda: encode_shards(t / "nom", t / "x.npy", t / "j8",
                                                              progress=False), "nom"),
        ("open_source dir", lambda: open_source(b / "emptydir"), "is a directory"),
        ("open_inputs dim", lambda: open_inputs(t / "x.npy", dim=D + 1), "dim 16, expected 17"),
        ("read_vecs trunc", lambda: read_vecs(b / "trunc.fvecs"), "truncated"),
        ("read_vecs ext", lambda: read_vecs(t / "x.npy"), "not a .fvecs"),
        ("write_vecs 1-d", lambda: write_vecs(t / "w.fvecs", np.zeros(3)), "(n, d)"),
        ("write_vecs dtype", lambda: write_vecs(t / "w.bvecs", np.zeros((2, 3))), "dtype"),
        ("source read range", lambda: list(open_source(t / "x.npy").read(0, 999)),
         "row range"),
        ("source chunk 0", lambda: list(open_source(t / "x.npy").read(0, 5, 0)), "chunk_rows"),
    ]
    for f, why in BAD_EMBEDDINGS:
        if f in ("emptydir", "nomatch*.npy", "rows0.npy", "wide.npy", "nan.npy", "inf.npy"):
            continue  # open_inputs / the job checks these (cases above and below)
        cases.append((f"open_source {f}", lambda f=f: list(open_source(b / f).read()), why))
    for f, why in BAD_SHARDS:
        cases.append((f"CodeShards {f}", lambda f=f: CodeShards(b / f), why))
    cases.append(("Manifest.load json", lambda: Manifest.load(b / "c_json"), "corrupted"))
    return cases


# ------------------------------------------------------------------ the run
def _run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    exc = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code
        except BaseException as e:  # escaped main: a traceback for the user
            rc, exc = None, e
    return rc, out.getvalue(), err.getvalue(), exc


def _classify_cli(rc, stderr, exc, match):
    lines = stderr.strip().splitlines()
    if exc is not None or "Traceback" in stderr:
        return "traceback"
    if rc == 0:
        return "silent"
    if rc not in (1, 2):
        return "crash"
    if len(lines) == 1 and lines[0].startswith("bebr") and ": error: " in lines[0] \
            and match in lines[0]:
        return "clear"
    return "vague"


def test_bad_input_tally(env):
    t, b, model, x = env
    tally = {"clear": 0, "vague": 0, "traceback": 0, "crash": 0, "silent": 0}
    bad = []
    for name, argv, match in cli_cases(t, b):
        rc, _, stderr, exc = _run_cli(argv)
        kind = _classify_cli(rc, stderr, exc, match)
        tally[kind] += 1
        if kind != "clear":
            bad.append(f"CLI {name}: {kind}: rc={rc} {exc!r} {stderr.strip()[-300:]!r}")
    for name, fn, match in api_cases(t, b, model, x):
        try:
            fn()
            kind, msg = "silent", "returned"
        except API_ERRORS as e:
            msg = f"{type(e).__name__}: {e}"
            kind = "clear" if match in str(e) else "vague"
        except Exception as e:  # an undocumented exception type
            kind, msg = "traceback", f"{type(e).__name__}: {e}"
        tally[kind] += 1
        if kind != "clear":
            bad.append(f"API {name}: {kind}: {msg[:300]}")
    tried = sum(tally.values())
    print(f"\nbad inputs: {tried} tried, {tally['clear']} clear errors, {tally['vague']} vague "
          f"errors, {tally['traceback']} tracebacks, {tally['crash']} crashes, "
          f"{tally['silent']} silent wrong answers")
    assert tried >= 150
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("argv", [
    ["encode", "--model", "{t}/m", "{b}/zero.npy", "-o", "{t}/o1"],
    ["search", "{b}/codes_pad.npy", "--index", "{t}/idx.bebr", "--codes"],
    ["index", "info", "{b}/trunc.bebr"],
    ["train", "{t}/x.npy", "-o", "{t}/o2", "--dim", "0"],
])
def test_bad_inputs_in_real_processes(env, argv):
    t, b, _, _ = env
    p = subprocess.run([sys.executable, "-m", "bebr.cli",
                        *(a.format(t=t, b=b) for a in argv)],
                       capture_output=True, text=True, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode in (1, 2) and len(lines) == 1 and ": error: " in lines[0], p.stderr
    assert "Traceback" not in p.stderr
