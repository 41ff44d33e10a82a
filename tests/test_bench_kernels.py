"""tools/bench_kernels.py --quick runs end to end and prints a sane table (not a speed test)."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "tools" / "bench_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_and_section_write(tmp_path, capsys):
    tool = load_tool()
    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text("# b\n\n<!-- section: kernels (tools/bench_kernels.py) -->\n## 1. Kernel throughput"
                     "\n\n(pending)\n\n<!-- section: quality (x) -->\n## 2. Q\n\nkeep me\n")
    res = tool.main(["--quick", "--write", str(bench)])
    out = capsys.readouterr().out
    assert len(res["rows"]) == 2 * 2 * 2 and len(res["ham"]) == 2 * 2
    for r in res["rows"] + res["ham"]:
        assert r["qps"] > 0 and r["faiss_qps"] > 0 and r["gbs"] > 0
    assert all(v > 0 for v in res["bw"].values())
    assert "streaming read bandwidth" in out and "IndexBinaryFlat" in out
    text = bench.read_text()
    assert "(pending)" not in text and "keep me" in text
    assert "python tools/bench_kernels.py --quick" in text
    table_rows = [line for line in text.splitlines() if re.match(r"\| [124] \| \d+ \| \d+ \|", line)]
    assert len(table_rows) == 8


def test_query_bits_bench_quick_run(capsys):
    spec = importlib.util.spec_from_file_location("bench_query_bits",
                                                  ROOT / "tools" / "bench_query_bits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.main(["--quick"])
    assert [(r[0], r[1]) for r in rows] == [(1, 1), (1, 64), (2, 1), (2, 64)]
    assert all(v > 0 for r in rows for v in r[2:])
    assert "SDC QPS (4-bit queries)" in capsys.readouterr().out
