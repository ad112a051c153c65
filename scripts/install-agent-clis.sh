#!/usr/bin/env bash
# Installs the agent CLIs the end-to-end tests drive (Claude Code, Codex,
# Gemini CLI) from the npm registry, at the versions pinned in
# scripts/agent-clis/package-lock.json, into target/agent-clis (never
# globally), and checks that each reports its pinned version. Re-running is
# cheap: an install whose versions already match is kept.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/scripts/agent-clis"
dest="${SCOUT_AGENT_CLIS:-$root/target/agent-clis}"

# name, package, the version line's expected text
clis=(
  "claude @anthropic-ai/claude-code 2.1.332"
  "codex @openai/codex 0.171.0"
  "gemini @google/gemini-cli 0.61.0"
)

check() {
  local ok=0
  for entry in "${clis[@]}"; do
    set -- $entry
    local bin="$dest/node_modules/.bin/$1"
    if [ ! -x "$bin" ]; then
      ok=1
      continue
    fi
    local version
    version="$("$bin" --version 2>/dev/null | head -n 1 || true)"
    case "$version" in
      *"$3"*) ;;
      *) echo "install-agent-clis: $1 reports '$version', pinned $3" >&2; ok=1 ;;
    esac
  done
  return $ok
}

if [ -f "$dest/package-lock.json" ] && cmp -s "$src/package-lock.json" "$dest/package-lock.json" && check 2>/dev/null; then
  echo "install-agent-clis: claude, codex and gemini already installed in $dest"
  exit 0
fi

if ! command -v npm >/dev/null; then
  echo "install-agent-clis: npm is not installed (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi

mkdir -p "$dest"
cp "$src/package.json" "$src/package-lock.json" "$dest/"
# Claude Code's install step links its native program for this platform;
# npm runs only the install scripts it is configured to allow.
if ! (cd "$dest" && npm ci --no-audit --no-fund --loglevel=error); then
  echo "install-agent-clis: npm could not install the pinned CLIs into $dest (is the npm registry reachable?)" >&2
  exit 1
fi
if ! check; then
  echo "install-agent-clis: an installed CLI does not report its pinned version" >&2
  exit 1
fi
echo "install-agent-clis: installed claude 2.1.332, codex 0.171.0 and gemini 0.61.0 into $dest"
