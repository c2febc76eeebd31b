"""The optional peer benchmark: one-line errors, with or without BenchMARL installed."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

PEER = os.path.join(ROOT, "benchmarks", "peer_benchmarl.py")
# runs the peer script as if BenchMARL were not installed (a None entry makes its import fail)
WITHOUT_BENCHMARL = "import runpy, sys; sys.modules['benchmarl'] = None; sys.argv = sys.argv[1:]; " \
                    "runpy.run_path(sys.argv[0], run_name='__main__')"


@pytest.mark.parametrize("flags, expected", [
    ([], "error: BenchMARL is not installed; `make peer` installs requirements-peer.txt"),
    (["--num-minibatches", "3"], "error: --num-minibatches 3 must divide --num-envs x --num-steps (1024)"),
    (["--iterations", "1"], "error: --iterations must be at least 2 (the first is not timed), got 1"),
    (["--substrate", "clean_upp"], "error: --substrate 'clean_upp' is not a Melting Pot substrate; close matches: "
                                   "clean_up"),
])
def test_peer_benchmark_bad_input_gets_one_line(tmp_path, flags, expected):
    result = subprocess.run([sys.executable, "-c", WITHOUT_BENCHMARL, PEER, *flags], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and result.stderr.strip() == expected
