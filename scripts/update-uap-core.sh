#!/usr/bin/env bash
# Refreshes intake/data/uap-core/ (regexes.yaml and LICENSE) from the npm
# package `uap-core`, uap-core's own distribution of regexes.yaml. Run it by
# hand when you want newer user-agent data; the build itself never goes to
# the network (intake/build.rs reads the vendored file).
#   scripts/update-uap-core.sh           the latest version
#   scripts/update-uap-core.sh 0.18.0    a given version
# Then: cargo test -p sluice-intake (intake/tests/ua.rs), and update the
# version in intake/data/uap-core/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-$(npm view uap-core version)}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
(cd "$dir" && npm pack --silent "uap-core@$version" >/dev/null && tar xzf "uap-core-$version.tgz")
cp "$dir/package/regexes.yaml" "$dir/package/LICENSE" intake/data/uap-core/
echo "update-uap-core: uap-core $version → intake/data/uap-core/ ($(wc -c < intake/data/uap-core/regexes.yaml) bytes)"
echo "update-uap-core: sha256 $(sha256sum intake/data/uap-core/regexes.yaml | cut -d' ' -f1)"
