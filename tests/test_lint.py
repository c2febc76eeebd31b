"""The code is formatted and lint-free as pyproject.toml's [tool.ruff] says (line length 127, as CleanRL's),
so a change that breaks either fails CI. Fix with `.venv/bin/ruff format . && .venv/bin/ruff check --fix .`."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT

RUFF = os.path.join(os.path.dirname(sys.executable), "ruff")


@pytest.mark.parametrize("check", [["format", "--check"], ["check"]], ids=["format", "lint"])
def test_ruff(check):
    result = subprocess.run([RUFF, *check, "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"ruff {' '.join(check)} failed:\n{result.stdout[-3000:]}{result.stderr[-1000:]}"
