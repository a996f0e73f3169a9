#!/usr/bin/env bash
# Prints the directory of a Node.js build of the major version $1, taken from the npm registry's
# `node-linux-<arch>` package (bin/node plus include/node, the headers node-gyp needs for native
# addons: no download from anywhere else). Cached in $SLOTFLIP_NODE_CACHE (default
# ~/.cache/slotflip/node/<major>); a cached build is reused only while it is the newest of its major
# that the registry lists (checked once per call, offline: the cached one is used as is).
# Use: dir=$(test/ci/node.sh 24) && PATH="$dir/bin:$PATH" npm_config_nodedir="$dir" npm ci
set -euo pipefail
major=${1:?usage: node.sh MAJOR}
case "$(uname -m)" in
  x86_64) arch=x64 ;;
  aarch64) arch=arm64 ;;
  armv7l) arch=armv7l ;;
  *) echo "node.sh: no registry Node build for $(uname -m)" >&2; exit 1 ;;
esac
cache=${SLOTFLIP_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/slotflip/node}
dir=$cache/$arch-$major
want=$(npm view "node-linux-$arch@$major" version --json 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | sort -V | tail -n 1 || true)
have=$(cat "$dir/.version" 2>/dev/null || true)
if [ -x "$dir/bin/node" ] && { [ -z "$want" ] || [ "$want" = "$have" ]; }; then echo "$dir"; exit 0; fi
[ -n "$want" ] || { echo "node.sh: node-linux-$arch@$major not found in the npm registry" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "node-linux-$arch@$want" >/dev/null)
mkdir -p "$tmp/x" && tar xzf "$tmp"/node-linux-*.tgz -C "$tmp/x" --strip-components=1
chmod 0755 "$tmp/x/bin/node"
"$tmp/x/bin/node" -e 'process.exit(process.versions.node === process.argv[1] ? 0 : 1)' "$want" || { echo "node.sh: node-linux-$arch@$want does not run here" >&2; exit 1; }
echo "$want" > "$tmp/x/.version"
mkdir -p "$cache" && rm -rf "$dir" && mv "$tmp/x" "$dir"
echo "$dir"
