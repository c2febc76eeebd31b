import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run_script(script, *flags, cwd, timeout=300, check=True):
    """Runs `python <script> <flags>` from `cwd` (so runs/ lands there); returns the result."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *flags],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def spawned_workers():
    """PIDs of live multiprocessing-spawned processes (our environment workers among them)."""
    pids = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"spawn_main" in cmdline and state != "Z":
            pids.add(int(pid))
    return pids


# Tiny settings shared by the end-to-end tests: 2 envs x 16 steps per iteration.
TINY = ["--num-envs", "2", "--num-steps", "16", "--num-minibatches", "2", "--update-epochs", "2",
        "--max-episode-steps", "20", "--hidden-size", "32", "--num-workers", "2"]


@pytest.fixture
def tiny_flags():
    return list(TINY)
