#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages Headroom builds and tests with, if any are missing.
# Build: libasound2-dev (cpal's ALSA back end) and pkg-config. Tests of the real window: xvfb,
# x11-apps, imagemagick, xdotool; the no-network test: util-linux (unshare) and strace.
# Everything else (X11, Wayland, GL, Vulkan, NVML) is loaded at run time.
# Packaging (--package, tools/package.sh): binutils (strip), desktop-file-utils (the entry's check),
# librsvg2-bin (tools/icons.sh renders the icon).
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
  echo "headroom: Rust is not installed; install it with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi
packages=(libasound2-dev pkg-config ca-certificates)
if [ "${1:-}" = "--test" ]; then
  packages+=(xvfb x11-apps imagemagick xdotool libgl1 libegl1 mesa-vulkan-drivers libvulkan1 libxkbcommon-x11-0 util-linux strace)
fi
if [ "${1:-}" = "--package" ]; then
  packages+=(binutils desktop-file-utils librsvg2-bin)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "headroom: not a Debian/Ubuntu system; install the equivalents of: ${missing[*]}" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "headroom: installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
