#!/usr/bin/env bash
# Refresh the console's vendored libraries from the npm registry (`npm pack`, no node_modules).
# Usage: service/api/console/vendor/refresh.sh   (then review the diff and VERSIONS.md, commit)
# The versions are pinned here; change one, run this, and check the console's browser tests.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../../.." && pwd)"
PREACT=10.29.8   # 10.x: the line htm and the hooks below are built for (11 is a new major)
HTM=3.1.1
UPLOT=1.6.32
AXE=4.14.1       # only for tests/console (injected by the test, never served)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
for spec in "preact@$PREACT" "htm@$HTM" "uplot@$UPLOT" "axe-core@$AXE"; do
    tarball="$(npm pack --silent "$spec")"
    name="${spec%@*}"
    mkdir -p "$name" && tar -xzf "$tarball" -C "$name" --strip-components=1
done

# ES modules as the packages ship them; the bare specifier "preact" becomes a relative path,
# so the browser needs no import map (an inline import map would need a CSP exception).
cp preact/dist/preact.module.js "$here/preact.module.js"
sed 's|from"preact"|from"./preact.module.js"|g' preact/hooks/dist/hooks.module.js \
    > "$here/hooks.module.js"
grep -q 'from"./preact.module.js"' "$here/hooks.module.js"
cp htm/dist/htm.module.js "$here/htm.module.js"
cp uplot/dist/uPlot.esm.js "$here/uPlot.esm.js"
cp uplot/dist/uPlot.min.css "$here/uPlot.min.css"
cp axe-core/axe.min.js "$root/tests/console/axe.min.js"
# Source maps are not shipped: strip the comments that point at them.
sed -i '/^\/\/# sourceMappingURL=/d; s|//# sourceMappingURL=[^ ]*$||' "$here"/*.js

mkdir -p "$here/licenses"
cp preact/LICENSE "$here/licenses/preact.LICENSE"
cp htm/LICENSE "$here/licenses/htm.LICENSE"
cp uplot/LICENSE "$here/licenses/uplot.LICENSE"
cp axe-core/LICENSE "$here/licenses/axe-core.LICENSE"

cat > "$here/VERSIONS.md" <<MD
# Vendored front-end libraries of the console

Fetched by \`refresh.sh\` with \`npm pack\` from the npm registry; nothing is built.

| package | version | licence | files | sha512 of the tarball (npm integrity) |
|---|---|---|---|---|
| preact | $PREACT | MIT | preact.module.js, hooks.module.js (import of "preact" made relative) | $(npm view "preact@$PREACT" dist.integrity) |
| htm | $HTM | Apache-2.0 | htm.module.js | $(npm view "htm@$HTM" dist.integrity) |
| uplot | $UPLOT | MIT | uPlot.esm.js, uPlot.min.css | $(npm view "uplot@$UPLOT" dist.integrity) |
| axe-core | $AXE | MPL-2.0 | tests/console/axe.min.js (tests only, not served) | $(npm view "axe-core@$AXE" dist.integrity) |

Licence texts: \`licenses/\`.
MD
echo "vendored: preact $PREACT, htm $HTM, uplot $UPLOT, axe-core $AXE"
