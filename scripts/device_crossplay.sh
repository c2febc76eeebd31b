#!/usr/bin/env bash
# The cross-play of a study, on a machine lent for a few minutes (16 cores, say): plays the study's pending
# pairs for MINUTES with a worker per core but one, then packs what finished, the study's results folder
# without its populations, into $OUT/crossplay.tar.gz (and the log into $OUT/crossplay.log). Back on the
# study's machine, `tar xzf crossplay.tar.gz` over the checkout and the study's own command continues: it
# plays only the pairs still missing. Every run of the study must already be exported to its --results.
#
#   MINUTES=8 scripts/device_crossplay.sh --out studies/X --results results/X --substrate ... --methods ... \
#       --seeds ... --total-timesteps ...
#
# Wheels in .whl/ (scripts/device_wheels.sh) are installed first, for a machine without our packages.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:?set OUT to the folder that comes back}
results=$(printf '%s\n' "$@" | grep -A1 -x -- --results | tail -1)
[ -n "$results" ] && [ "$results" != --results ] || { echo "error: pass the study's --results folder" >&2; exit 2; }
if [ -d .whl ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
workers=$(( $(nproc) > 1 ? $(nproc) - 1 : 1 ))
echo "cross-play for ${MINUTES:-8} minutes with $workers workers: study.py $*" | tee "$OUT/crossplay.log"
PYTHONUNBUFFERED=1 timeout -s INT "${MINUTES:-8}m" "$PYTHON" study.py "$@" --num-workers "$workers" 2>&1 \
  | tr '\r' '\n' | grep -v 'it/s\]$' >> "$OUT/crossplay.log"
echo "study.py exited ${PIPESTATUS[0]} (124: stopped at ${MINUTES:-8} minutes, its finished pairs saved)" | tee -a "$OUT/crossplay.log"
tar czf "$OUT/crossplay.tar.gz" --exclude=population.pt "$results"
ls -la "$OUT"
