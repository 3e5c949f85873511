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
command -v python3 >/dev/null || { echo "schemathesis.sh: python3 is required" >&2; exit 1; }
mkdir -p .dev
python3 -m venv "$VENV" >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" >&2
"$BIN" --version >&2
echo "$PWD/$BIN"
