#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root) to build, run and test Volt:
# Debian packages, Bun (pinned, from the npm registry) and the project's
# dependencies. Safe to run again: it installs only what is missing.
# Test-only assets (Debian's kernel package and kernel source, QEMU 10 for the
# nested-KVM harness, a kernel built by `volt kernel build`) are fetched,
# built and cached by test/harness/ when the tests need them.
set -euo pipefail
cd "$(dirname "$0")/.."

BUN_VERSION=$(sed -n 's/.*"packageManager": *"bun@\([0-9.]*\)".*/\1/p' package.json)
log() { echo "setup: $*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# gcc + headers: the C shim and the ABI test; busybox-static + cpio: guest
# initramfs; qemu-system-x86: the nested-KVM test harness and benchmarks;
# e2fsprogs: ext4 root images; make, flex, bison, bc, libelf-dev, xz-utils:
# `volt kernel build` (the end-to-end tests build a kernel from Debian's
# linux-source-6.1, which test/harness/ installs when it needs it).
packages=(gcc libc6-dev linux-libc-dev busybox-static cpio qemu-system-x86 e2fsprogs acpica-tools iproute2 ca-certificates
  make binutils flex bison bc libelf-dev xz-utils)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$(bun --version 2>/dev/null || true)" != "$BUN_VERSION" ]; then
  log "installing bun $BUN_VERSION from the npm registry"
  # bun's package installs its binary in a postinstall script; newer npm
  # versions only run scripts they are told to allow.
  if ! as_root npm install -g --allow-scripts=bun "bun@$BUN_VERSION" >/dev/null 2>&1; then
    as_root npm install -g "bun@$BUN_VERSION" >/dev/null
  fi
  hash -r
fi
[ "$(bun --version)" = "$BUN_VERSION" ] || { log "bun $BUN_VERSION did not install (got $(bun --version 2>&1))"; exit 1; }

log "installing the project's dependencies"
bun install --frozen-lockfile >/dev/null
log "ready: bun $(bun --version), $(gcc --version | head -1)"
