#!/usr/bin/env bash
# Installs the ReDoc standalone bundle served at /api/redoc/redoc.standalone.js.
# It comes from the `redoc` package of the npm registry (pinned version, integrity
# checked by npm); nothing is committed to the repository and no CDN is used.
set -euo pipefail
VERSION=${REDOC_VERSION:-2.5.2}
here="$(cd "$(dirname "$0")/.." && pwd)"
dest="$here/assets/vendor"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
command -v npm >/dev/null || { echo "npm is required (e.g. apt-get install npm)"; exit 1; }
(cd "$tmp" && npm pack --silent "redoc@${VERSION}" >/dev/null)
tar -xzf "$tmp"/redoc-"${VERSION}".tgz -C "$tmp" package/bundles/redoc.standalone.js package/bundles/redoc.standalone.js.LICENSE.txt package/LICENSE
mkdir -p "$dest"
cp "$tmp/package/bundles/redoc.standalone.js" "$dest/"
cp "$tmp/package/bundles/redoc.standalone.js.LICENSE.txt" "$dest/"
cp "$tmp/package/LICENSE" "$dest/REDOC-LICENSE"
echo "installed ReDoc ${VERSION} into ${dest}"
