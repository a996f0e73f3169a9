#!/usr/bin/env bash
# Builds slotflip_<version>_<arch>.deb with dpkg-deb (no debhelper): builds dist/, installs the
# production node_modules into a staging tree under the Node that runs the build (so the unix-dgram
# addon matches its ABI; with --with-node, the bundled Node), lays out the files listed in
# ../files.list and writes DEBIAN/control and conffiles. Prints the .deb's path last.
#
#   npm run package:deb [-- --with-node] [-- --out DIR]
#   bash systemd/packaging/debian/build-deb.sh [--out DIR] [--with-node] [--no-build] [--keep-stage]
#                                              [--compression xz|gzip|none]
# (--compression: dpkg-deb's -Z, default xz; test lanes that install the package at once use none:
# the same files, without minutes of xz on a loaded machine)
#
# Node on the device: Depends: nodejs (>= 22). Debian 12 ships nodejs 18, Debian 13 ships 20: such a
# device needs Node 22+ from elsewhere, or the --with-node build, which carries Node
# ($SLOTFLIP_NODE_MAJOR, default 24) from the npm registry's node-linux-<arch> package in
# /usr/lib/slotflip/node (only bin/node and its licence; ~120 MiB more) and depends on libc6 only.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
out=$repo/dist/deb
with_node=0
build=1
keep=0
compression=xz
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --with-node) with_node=1; shift ;;
    --no-build) build=0; shift ;;
    --keep-stage) keep=1; shift ;;
    --compression) case "$2" in xz|gzip|none) compression=$2; shift 2 ;; *) echo "build-deb: --compression takes xz, gzip or none" >&2; exit 2 ;; esac ;;
    *) echo "build-deb: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
command -v dpkg-deb >/dev/null || { echo "build-deb: needs dpkg-deb (Debian's dpkg package)" >&2; exit 1; }
cd "$repo"
version=$(node -p 'require("./package.json").version')
arch=$(dpkg --print-architecture)
major=${SLOTFLIP_NODE_MAJOR:-24}
if [ "$with_node" = 1 ]; then
  nodedir=$(bash test/ci/node.sh "$major")
  export PATH="$nodedir/bin:$PATH" npm_config_nodedir="$nodedir"
  version="$version+node$major"
fi
[ "$build" = 1 ] && npm run build --silent
[ -f dist/daemon/cli.js ] || { echo "build-deb: dist/ is not built (npm run build)" >&2; exit 1; }

work=$(mktemp -d)
[ "$keep" = 1 ] || trap 'rm -rf "$work"' EXIT
root=$work/slotflip_${version}_$arch
app=$root/usr/lib/slotflip
mkdir -p "$app/dist"
for d in daemon hal manifests; do cp -r "dist/$d" "$app/dist/"; done
find "$app/dist" -name '*.map' -delete
chmod 0755 "$app/dist/daemon/cli.js"
cp package.json package-lock.json "$app/"
# production dependencies only, from the lock file; an optional addon that cannot build is left out
# (the daemon then runs without sd_notify and says so)
(cd "$app" && npm ci --omit=dev --no-audit --no-fund --prefer-offline --loglevel=error)
rm -f "$app/package-lock.json" "$app/node_modules/.package-lock.json"
# type declarations and source maps are for editors and debuggers, not for the device
find "$app/node_modules" -type f \( -name '*.map' -o -name '*.d.ts' -o -name '*.d.mts' -o -name '*.d.cts' \) -delete
# the addon's intermediate objects are build leftovers; only the .node file is loaded
find "$app/node_modules" -path '*/build/Release/*' ! -name '*.node' -prune -exec rm -rf {} + 2>/dev/null || true
find "$app/node_modules" -type d -name build -path '*/unix-dgram/*' -exec sh -c 'rm -rf "$1"/Makefile "$1"/*.mk "$1"/config.gypi "$1"/binding.Makefile "$1"/gyp-mac-tool' _ {} \; || true
if [ "$with_node" = 1 ]; then
  mkdir -p "$app/node/bin"
  cp "$nodedir/bin/node" "$app/node/bin/node"
  cp "$nodedir/LICENSE" "$app/node/LICENSE"
fi

conffiles=()
while read -r mode dest src; do
  case "$mode" in ''|'#'*) continue ;; esac
  install -D -m "$mode" "$src" "$root$dest"
  case "$dest" in /etc/*) conffiles+=("$dest") ;; esac
done < systemd/packaging/files.list

if [ "$with_node" = 1 ]; then depends="libc6 (>= 2.28), libstdc++6"
else depends="nodejs (>= 22)"; fi
mkdir -p "$root/DEBIAN"
printf '%s\n' "${conffiles[@]}" > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/control" <<CONTROL
Package: slotflip
Version: $version
Architecture: $arch
Maintainer: slotflip maintainers <slotflip@localhost>
Section: admin
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: $depends
Recommends: zstd
Suggests: libubootenv-tool | grub-common
Homepage: https://github.com/slotflip/slotflip
Description: over-the-air A/B update daemon for unattended Linux devices
 TUF-signed releases, chunk-verified streaming installs into the inactive
 root partition, trial boots, health checks and automatic rollback, with the
 bootloader conventions of RAUC, Mender and greenboot (U-Boot, GRUB,
 systemd-boot, Raspberry Pi tryboot).
 .
 Needs Node.js 22 or later. Debian 12 ships 18 and Debian 13 ships 20: install
 Node 22+ from elsewhere, or use the build of this package made with
 --with-node (version suffix +nodeNN), which carries its own Node.
 .
 Copy /etc/slotflip/config.example.json to /etc/slotflip/config.json, fit it
 to the board (systemd/examples in the source), then
 systemctl enable --now slotflip.service slotflip-health.service.
CONTROL

mkdir -p "$out"
deb=$out/slotflip_${version}_$arch.deb
dpkg-deb --root-owner-group "-Z$compression" --build "$root" "$deb" >/dev/null
echo "build-deb: staged tree $(du -sh --exclude=DEBIAN "$root" | cut -f1) (node_modules $(du -sh "$app/node_modules" | cut -f1)), .deb $(du -h "$deb" | cut -f1)" >&2
[ "$keep" = 1 ] && echo "build-deb: staging tree kept in $root" >&2
echo "$deb"
