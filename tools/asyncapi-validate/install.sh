#!/usr/bin/env bash
# Installs the pinned AsyncAPI parser into node_modules/ with `npm ci` (exactly the versions
# and hashes of package-lock.json), unless what is installed was made from these very
# package.json and package-lock.json. Idempotent: a second run costs a checksum.
set -euo pipefail
cd "$(dirname "$0")"

stamp=node_modules/.sagakit-installed
wanted="$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
  exit 0
fi
# No install scripts: the parser needs none, and the only one among its dependencies
# (@scarf/scarf) sends install analytics.
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
echo "$wanted" >"$stamp"
