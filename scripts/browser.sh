#!/usr/bin/env bash
# Prints the path of a Chromium for the browser tests, installing Debian's
# `chromium` package when none is there (the tests drive it with playwright-core).
set -euo pipefail
path=${CHROMIUM_PATH:-$(command -v chromium || true)}
if [[ -z $path ]]; then
  echo "browser.sh: installing chromium (Debian package)" >&2
  sudo_=""; [[ $(id -u) -eq 0 ]] || sudo_=sudo
  $sudo_ apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends chromium >&2
  path=$(command -v chromium)
fi
echo "$path"
