"""Worker processes of ``bebr encode --workers N`` die with their parent: SIGKILL of the parent
(no cleanup possible there) and SIGTERM (the parent terminates them itself)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import bebr

psutil = pytest.importorskip("psutil")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="process-lifecycle test written for Linux")

REPO = Path(bebr.__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def slow_job(tmp_path_factory):
    """A model and input slow enough that the 10 units take seconds each (wide MLP
    branches)."""
    import torch

    d = tmp_path_factory.mktemp("slowjob")
    torch.manual_seed(0)
    bebr.Binarizer(64, 64, 4, hidden=512, depth=3, version="slow-v1").save(d / "m")
    x = np.random.default_rng(0).standard_normal((40_000, 64)).astype(np.float32)
    np.save(d / "x.npy", x)
    return d


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _start_and_find_workers(job, out):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bebr.cli", "encode", "--model", str(job / "m"),
         str(job / "x.npy"), "-o", str(out), "--workers", "2", "--shard-rows", "4000",
         "--chunk-rows", "4096", "--no-progress", "-q"],
        cwd=job, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    workers = []
    while time.monotonic() < deadline and proc.poll() is None:
        workers = [c for c in parent.children()
                   if "spawn_main" in " ".join(c.cmdline())]
        # workers past their start-up (imports, initializer): a first shard is written
        if len(workers) == 2 and list(out.glob("codes-*.npy")):
            break
        time.sleep(0.2)
    if proc.poll() is not None:
        pytest.fail(f"bebr encode ended before the test could kill it: "
                    f"{proc.stderr.read().decode()[-2000:]}")
    assert len(workers) == 2, "the two worker processes never showed up"
    return proc, [w.pid for w in workers]


def _wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_with_the_parent(slow_job, tmp_path, sig):
    proc, pids = _start_and_find_workers(slow_job, tmp_path / "out")
    try:
        proc.send_signal(sig)
        proc.wait(timeout=30)
        left = _wait_gone(pids, timeout=8.0)
        assert left == [], f"workers {left} outlived the parent ({sig.name})"
        if sig == signal.SIGTERM:
            assert proc.returncode == 128 + signal.SIGTERM
    finally:
        for p in pids:  # never leave a test's worker behind
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
