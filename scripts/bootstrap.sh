#!/usr/bin/env bash
# Set up tether on a fresh Debian/Ubuntu machine, then run the main job or the whole suite.
#   bash scripts/bootstrap.sh demo   # install, then run tether on its embedded defaults
#   bash scripts/bootstrap.sh test   # install, then run the whole test suite
# Idempotent: a second run installs nothing new. Needs root or sudo for the system packages.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
mode=${1:-demo}
shift || true

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# System parts the capabilities drive for real (tests use the same ones).
PACKAGES="openssh-server openssh-client rsync bubblewrap git zstd tar procps iproute2
  ca-certificates python3 python3-venv python3-pip"
if [ "$mode" = "test" ]; then
  # code-server's native modules (kerberos, native-keymap) build against these headers
  PACKAGES="$PACKAGES chromium build-essential libkrb5-dev libx11-dev libxkbfile-dev"
  # Some images ship a nodejs that bundles npm (NodeSource); Debian's npm would conflict.
  command -v npm >/dev/null 2>&1 || PACKAGES="$PACKAGES nodejs npm"
fi

missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "bootstrap: installing system packages:$missing" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# Python: a project venv, reinstalled only when pyproject.toml changes.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.tether-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)-$mode
if [ ! -f "$stamp" ] || ! grep -qx "$want" "$stamp"; then
  extra=""
  if [ "$mode" = "test" ]; then extra="[test]"; fi
  echo "bootstrap: installing tether$extra into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".$extra"
  echo "$want" > "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"

case "$mode" in
  demo)
    exec bash scripts/demo.sh "$@"
    ;;
  test)
    # pytest's exit 5 (no tests collected) is a failure for us, and set -e passes it on.
    exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
    ;;
  *)
    echo "usage: bash scripts/bootstrap.sh demo|test [args...]" >&2
    exit 2
    ;;
esac
