"""`bebr bench --quick` runs from an installed wheel: build the wheel, install it into a fresh
venv (system site-packages for torch, faiss and the data packages), and run the suite from a
directory outside the source tree. Minutes (wheel build + the quick suite): skipped unless
BEBR_TEST_WHEEL=1 (.ci/run sets it for this file)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import bebr

ROOT = Path(bebr.__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.wheel,
    pytest.mark.skipif(os.environ.get("BEBR_TEST_WHEEL") != "1",
                       reason="builds a wheel and a venv (minutes): set BEBR_TEST_WHEEL=1"),
]


def _run(cmd, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n" \
                              f"{p.stderr[-3000:]}"
    return p


def test_bench_quick_from_a_wheel_in_a_fresh_venv(tmp_path):
    pytest.importorskip("faiss")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "--no-build-isolation",
          "-w", wheels], cwd=ROOT, env=env, timeout=1200)
    (whl,) = wheels.glob("bebr-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv], env=env, timeout=300)
    py = venv / "bin" / "python"
    _run([py, "-m", "pip", "install", "--no-deps", "--ignore-installed", whl], env=env,
         timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([py, "-c", "import bebr, bebr.bench.suite; print(bebr.__file__)"],
                 cwd=elsewhere, env=env, timeout=300).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), \
        f"the venv imported bebr from {where}, not from the installed wheel"
    out = tmp_path / "out"
    p = _run([venv / "bin" / "bebr", "bench", "--quick", "--out", out], cwd=elsewhere,
             env=env, timeout=1500)
    text = (out / "BENCHMARKS.md").read_text()
    for name in ("bench-kernels", "bench-iso-recall", "bench-recall-bits", "bench-scaling"):
        assert f"<!-- section: {name} " in text, (name, p.stdout[-2000:])
    assert (out / "docs" / "bench_kernels.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Benchmarks" in (out / "README.md").read_text()
    assert not list(elsewhere.iterdir()), "the suite wrote into the working directory"
