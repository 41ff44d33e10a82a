"""The studies of the benchmark suite (tools/bench_suite.py); each module has NAME (its
BENCHMARKS.md section), TITLE, PLOT (its PNG under docs/), run(quick, bw, log), markdown(res)
and plot(res, path)."""
