#!/usr/bin/env bash
# Renders the app icon's PNGs from icons/headroom.svg (hand-written) with rsvg-convert
# (Debian package librsvg2-bin: `bash tools/install-deps.sh --package` installs it).
# The PNGs are committed; run this again after editing the SVG.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v rsvg-convert >/dev/null || { echo "headroom: rsvg-convert missing (apt-get install librsvg2-bin)" >&2; exit 1; }
for size in 32 64 128 256 512; do
  rsvg-convert --width "$size" --height "$size" icons/headroom.svg --output "icons/${size}x${size}.png"
done
echo "icons/: $(ls icons/*x*.png | wc -l) PNGs rendered from icons/headroom.svg"
