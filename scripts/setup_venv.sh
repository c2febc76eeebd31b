#!/usr/bin/env bash
# Installs everything the project needs into ./.venv. Safe to run again: pip skips what is
# already installed at the pinned version. `make` runs it when requirements.txt or this
# script is newer than the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
MELTINGPOT_VERSION=2.4.1
ASSETS_TARBALL=meltingpot-assets-2.3.0.tar.gz   # the name dm-meltingpot's build looks for

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else
  "error: Melting Pot needs Python >= 3.11, found %s; run with PYTHON=python3.11 make ..." % sys.version.split()[0])'
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet -r requirements.txt

if "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('dm-meltingpot') != '$MELTINGPOT_VERSION')" 2>/dev/null; then
  exit 0
fi

# dm-meltingpot's build downloads the bot assets unless it finds $ASSETS_TARBALL in
# tempfile.gettempdir(), which honours TMPDIR. First try the real download from an empty
# folder of ours (so a stale tarball in /tmp cannot stand in for it); only if the download
# is impossible, build against a placeholder holding an empty assets/saved_models/.
# --no-cache-dir: a wheel cached by an earlier install must not hide which path was taken.
build_tmp=$(mktemp -d "$PWD/$VENV/meltingpot-build.XXXXXX")
trap 'rm -rf "$build_tmp"' EXIT
log="$build_tmp/pip.log"
pip_install_meltingpot() {
  TMPDIR="$build_tmp" "$VENV/bin/python" -m pip install --no-deps --no-cache-dir \
    "dm-meltingpot==$MELTINGPOT_VERSION" >"$log" 2>&1
}
if pip_install_meltingpot; then
  echo "dm-meltingpot $MELTINGPOT_VERSION installed with its bot assets"
elif grep -qE "urlopen error|URLError|Name or service not known|Temporary failure in name resolution|Network is unreachable" "$log"; then
  mkdir -p "$build_tmp/placeholder/assets/saved_models"
  tar -czf "$build_tmp/$ASSETS_TARBALL" -C "$build_tmp/placeholder" assets
  pip_install_meltingpot || { cat "$log"; exit 1; }
  echo "dm-meltingpot $MELTINGPOT_VERSION installed WITHOUT bot assets (download impossible here): substrates and the 12 no-op-bot scenarios work; see docs/get-started/installation.md"
else
  cat "$log"
  echo "error: installing dm-meltingpot $MELTINGPOT_VERSION failed (log above)" >&2
  exit 1
fi
