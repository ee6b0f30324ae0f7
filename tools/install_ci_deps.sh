#!/usr/bin/env bash
# System packages the CI needs beyond Python, for the documentation site and its browser test
# (tools/docs.py, tests/test_docs.py): headless Chromium, fonts for its screenshots, and npm (docs.py fetches
# KaTeX and the theme's font with `npm pack`, once, into its cache). Idempotent and quiet: does nothing when all
# of it is there. Needs root (or sudo) and a reachable Debian/Ubuntu package mirror.
set -euo pipefail

missing=()
for p in chromium fonts-dejavu-core fonts-liberation; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v npm >/dev/null 2>&1 || missing+=(npm)   # any npm will do, Debian's or Node's own
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
APT=(-qq -o=Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=600)   # wait for another apt run rather than fail
$SUDO apt-get "${APT[@]}" update >/dev/null
$SUDO apt-get "${APT[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null
command -v chromium >/dev/null 2>&1 || { echo "install_ci_deps.sh: chromium still missing after apt-get" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "install_ci_deps.sh: npm still missing after apt-get" >&2; exit 1; }
