#!/bin/sh
# /usr/bin/slotflip: runs the application in /usr/lib/slotflip (found relative to this file, so an
# unpacked tree runs where it lies) with the Node that came with it, if any (the .deb built with
# --with-node carries one in /usr/lib/slotflip/node), else `node` on PATH (22 or later).
# exec: under slotflip.service Node itself is the main process (Type=notify, NotifyAccess=main).
self=$(readlink -f "$0") || self=$0
lib=${self%/*}/../lib/slotflip
node=$lib/node/bin/node
[ -x "$node" ] || node=node
# --max-semi-space-size=1: V8's young generation capped at 1 MiB per semi-space (default: grown to 16
# MiB on allocation and never given back): ~28 MiB less peak RSS during an install (issue 16, 24);
# slotflip.service sets the same through NODE_OPTIONS.
# `slotflip daemon` also starts with V8's optimizing compilers off (daemon/footprint.ts: the daemon
# idles interpreted and turns them on around an install). Off from the first line rather than from
# the daemon's own `v8.setFlagsFromString`: Maglev and TurboFan otherwise compile what gets hot while
# Node starts and the daemon's modules load, and their code stays resident: 2 MiB of idle RSS
# (npm run bench:memory, which takes these flags from this line). Not in NODE_OPTIONS: Node refuses them there.
# Node's on-disk compile cache (module compile cache, Node >= 22.1): the bytecode of the modules a
# command loads, kept between runs, so a start parses and compiles only what changed (an update
# changes the files: their entries are rewritten, keyed by path, checked against the source). One
# subdirectory per Node version and flag set, ~0.7 MiB each. /var/cache/slotflip is slotflip.service's
# CacheDirectory= (tmpfiles creates it for the CLI too); where it cannot be written or an entry is
# damaged, Node compiles as without it (never an error). NODE_COMPILE_CACHE set by the caller wins;
# NODE_DISABLE_COMPILE_CACHE=1 turns it off.
export NODE_COMPILE_CACHE="${NODE_COMPILE_CACHE-/var/cache/slotflip}"
# `slotflip install` and `update` too (an install from the CLI): a full install's hot work is native
# (zstd, SHA-256, I/O), and with the compilers on TurboFan and Maglev page in ~7 MiB of the node
# binary for nothing (peak RSS 102 -> 93 MiB, CPU the same within 1%, 1 GiB, cli-bench, load 15-18);
# a delta install turns them on for its chunking (daemon/compose.ts, daemon/footprint.ts).
# --expose-gc (as slotflip.service's NODE_OPTIONS gives the daemon): a full install returns the heap
# its TUF refresh and preflight left behind before the payload streams (daemon/command-support.ts,
# footprint.ts reclaimHeap); the idle daemon returns its free heap pages.
case ${1-} in
  daemon|install|update) exec "$node" --max-semi-space-size=1 --no-turbofan --no-maglev --expose-gc "$lib/dist/daemon/cli.js" "$@" ;;
esac
exec "$node" --max-semi-space-size=1 "$lib/dist/daemon/cli.js" "$@"
