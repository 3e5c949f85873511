#!/usr/bin/env bash
# Install schemathesis (pinned) into .dev/schemathesis, once; print its path.
# Used by tests/tests/openapi.rs through scripts/test.sh (SLUICE_SCHEMATHESIS).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=4.32.5
VENV=.dev/schemathesis
BIN=$VENV/bin/schemathesis
if [[ -x $BIN ]] && "$BIN" --version 2>/dev/null | grep -q "$VERSION"; then
  echo "$PWD/$BIN"
  exit 0
fi
# A fresh Debian has no python3, or one without venv/ensurepip: both from apt.
if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  echo "schemathesis.sh: installing python3 and python3-venv (Debian packages)" >&2
  sudo_=""; [[ $(id -u) -eq 0 ]] || sudo_="sudo"
  $sudo_ apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends python3 python3-venv >&2
fi
mkdir -p .dev
python3 -m venv "$VENV" >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" >&2
"$BIN" --version >&2
echo "$PWD/$BIN"
