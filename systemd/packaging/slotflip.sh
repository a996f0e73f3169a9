#!/bin/sh
# /usr/bin/slotflip: runs the application in /usr/lib/slotflip (found relative to this file, so an
# unpacked tree runs where it lies) with the Node that came with it, if any (the .deb built with
# --with-node carries one in /usr/lib/slotflip/node), else `node` on PATH (22 or later).
# exec: under slotflip.service Node itself is the main process (Type=notify, NotifyAccess=main).
self=$(readlink -f "$0") || self=$0
lib=${self%/*}/../lib/slotflip
node=$lib/node/bin/node
[ -x "$node" ] || node=node
exec "$node" "$lib/dist/daemon/cli.js" "$@"
