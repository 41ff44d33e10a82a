"""The studies of the benchmark suite (bebr/bench/suite.py, `bebr bench`); each module has NAME (its
BENCHMARKS.md section), TITLE, PLOT (its PNG under docs/), run(quick, bw, log), markdown(res)
and plot(res, path)."""
