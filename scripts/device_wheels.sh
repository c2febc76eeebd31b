#!/usr/bin/env bash
# Fetches into .whl/ the wheels a study needs on a borrowed GPU machine that has Python 3.12, PyTorch, numpy,
# pandas, scipy, scikit-learn, matplotlib, tensorboard, OpenCV, absl and chex, and no internet: what
# requirements.txt adds to those, for Python 3.12 on x86-64. dm-meltingpot is built here as setup_venv.sh
# builds it offline (against a placeholder for the bots' assets; substrates need none). 2.8 MB in all.
# scripts/device_crossplay.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
rm -rf .whl && mkdir .whl
fetch() { "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl "$@"; }
fetch --platform any tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1 dm-env==1.6 immutabledict==4.3.1 \
  ml-collections==1.1.0 reactivex==6.1.0
fetch --platform manylinux_2_28_x86_64 dm-tree==0.1.10
fetch --platform manylinux_2_35_x86_64 dmlab2d==1.0.2   # the oldest glibc it is built for
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
mkdir -p "$build/placeholder/assets/saved_models"
tar -czf "$build/meltingpot-assets-2.3.0.tar.gz" -C "$build/placeholder" assets
TMPDIR="$build" "$PY" -m pip wheel --quiet --no-deps --no-cache-dir -w .whl dm-meltingpot==2.4.1
ls .whl
