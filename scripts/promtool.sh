#!/usr/bin/env bash
# Prints the path of promtool, installing Debian's `prometheus` package
# (--no-install-recommends) if it is missing. Its service is never started:
# a policy-rc.d that refuses every start is in place for the install.
set -euo pipefail
if command -v promtool >/dev/null; then command -v promtool; exit 0; fi
echo "promtool.sh: installing prometheus (Debian package, for promtool only)" >&2
sudo_=""; [[ $(id -u) -eq 0 ]] || sudo_="sudo"
policy=/usr/sbin/policy-rc.d
placed=""
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo_ tee "$policy" >/dev/null
  $sudo_ chmod +x "$policy"
  placed=1
fi
trap '[[ -n $placed ]] && $sudo_ rm -f "$policy"' EXIT
$sudo_ apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo_ apt-get install -y -qq --no-install-recommends prometheus >&2
# The package enables its service for the next boot; nothing here runs it.
if pgrep -x prometheus >/dev/null; then
  echo "promtool.sh: the package started prometheus; stopping it" >&2
  $sudo_ pkill -x prometheus || true
fi
command -v promtool
