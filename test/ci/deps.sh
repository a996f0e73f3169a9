#!/usr/bin/env bash
# The Debian packages the tests use (real tools: mosquitto, zstd, fw_setenv, grub-editenv, QEMU, …).
# Run by .ci/run and by `npm test` (pretest): installs the missing ones with apt-get as root, or
# through sudo when it needs no password; otherwise says what to run and fails. Nothing is installed
# when every package is present (a `dpkg -s` per package, well under a second).
# SLOTFLIP_SKIP_DEPS=1 skips the check (for a machine that runs only part of the suite).
set -uo pipefail
[ "${SLOTFLIP_SKIP_DEPS:-}" = 1 ] && exit 0
pkgs=(mosquitto nginx-light rabbitmq-server ejabberd zstd libubootenv-tool grub-common u-boot-tools mtools dosfstools fdisk util-linux systemd openssl python3 make g++ qemu-system-arm u-boot-qemu grub-emu qemu-system-x86 ovmf grub-efi-amd64-bin systemd-boot-efi softhsm2 opensc)
if ! command -v dpkg >/dev/null; then
  echo "test deps: not a Debian system (no dpkg); the tests need: ${pkgs[*]}" >&2
  exit 1
fi
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=(sudo -n)
else
  echo "test deps: missing Debian packages: ${missing[*]}" >&2
  echo "  run: sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  echo "  (or run as root, or with passwordless sudo, and this step installs them itself)" >&2
  exit 1
fi
echo "test deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
# mosquitto's Debian package starts a system broker on :1883; tests start their own on free ports.
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" || { echo "test deps: apt-get install failed: ${missing[*]}" >&2; exit 1; }
