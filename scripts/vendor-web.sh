#!/usr/bin/env bash
# Vendors the browser libraries the web view embeds (xterm.js and its fit
# addon) from the npm registry, at the versions pinned in
# scripts/web-vendor/package-lock.json, into src/http/web/vendor with their
# licences. The broker embeds those files in its binary, so the page works
# offline and never loads anything from a CDN. Re-run after changing the
# pinned versions; the result is committed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/scripts/web-vendor"
dest="$root/src/http/web/vendor"

if ! command -v npm >/dev/null; then
  echo "vendor-web: npm is not installed (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$src/package.json" "$src/package-lock.json" "$work/"
if ! (cd "$work" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error); then
  echo "vendor-web: npm could not install the pinned libraries (is the npm registry reachable?)" >&2
  exit 1
fi

modules="$work/node_modules/@xterm"
rm -rf "$dest"
mkdir -p "$dest"
# The source map comments are dropped: the maps are not embedded, and a
# browser would ask for them.
sed '/^\/\/# sourceMappingURL=/d' "$modules/xterm/lib/xterm.mjs" >"$dest/xterm.mjs"
sed '/^\/\/# sourceMappingURL=/d' "$modules/addon-fit/lib/addon-fit.mjs" >"$dest/addon-fit.mjs"
cp "$modules/xterm/css/xterm.css" "$dest/xterm.css"
cp "$modules/xterm/LICENSE" "$dest/LICENSE.xterm"
cp "$modules/addon-fit/LICENSE" "$dest/LICENSE.addon-fit"
xterm_version="$(node -p "require('$modules/xterm/package.json').version")"
fit_version="$(node -p "require('$modules/addon-fit/package.json').version")"
cat >"$dest/VERSIONS" <<VERSIONS
@xterm/xterm $xterm_version
@xterm/addon-fit $fit_version
VERSIONS
echo "vendor-web: vendored @xterm/xterm $xterm_version and @xterm/addon-fit $fit_version into $dest"
