#!/usr/bin/env bash
# CI's install check: builds the .deb (tools/package.sh), installs it with apt-get, runs the
# installed /usr/bin/headroom from a folder outside the repository (version, the embedded model
# found in the install, a 2-step run), validates the installed desktop entry and MIME types, then
# removes the package again (also on failure). Root or sudo.
#   bash tools/package-check.sh            # packages the dev binary tools/test.sh built (no rebuild)
#   bash tools/package-check.sh release    # builds and packages a release binary (what users get)
#   bash tools/package-check.sh release --no-build   # packages the release binary already built
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-dev}
no_build=${2:-}
[ "$profile" = dev ] && no_build=--no-build
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
fail() { echo "package-check: $*" >&2; exit 1; }

time bash tools/package.sh --profile "$profile" $no_build
deb=$(ls "$PWD"/target/packages/headroom_*.deb)
echo "package-check: $(basename "$deb"): $(du -h "$deb" | cut -f1)"
dpkg-deb --info "$deb" | grep -E "Package|Version|Depends|Installed-Size"

work=$(mktemp -d)
cleanup() {
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq --purge headroom >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$deb" >/dev/null

cd "$work"
export HEADROOM_DATA="$work/data"
unset HEADROOM_MODELS HEADROOM_RESOURCES
[ "$(command -v headroom)" = /usr/bin/headroom ] || fail "headroom is not /usr/bin/headroom"
/usr/bin/headroom --version
# The embedded model must come from the install, not from the repository the binary was built in.
/usr/bin/headroom inspect builtin:shapes --json > inspect.json
grep -q '"/usr/lib/headroom/models/shapes' inspect.json \
  || fail "builtin:shapes was not found in /usr/lib/headroom: $(grep -m1 '/models/' inspect.json)"
/usr/bin/headroom run builtin:shapes --steps 2 --out "$work/out"
ls "$work"/out/*.png >/dev/null || fail "the run wrote no PNG in $work/out"
[ -f /usr/lib/headroom/assets/clip/vocab.json ] || fail "assets/clip is not installed"
[ -f /usr/share/icons/hicolor/256x256/apps/headroom.png ] || fail "the 256 px icon is not installed"
[ -f /usr/share/icons/hicolor/scalable/apps/headroom.svg ] || fail "the SVG icon is not installed"
desktop-file-validate /usr/share/applications/headroom.desktop
grep -q "MimeType=application/x-safetensors;application/x-gguf;" /usr/share/applications/headroom.desktop \
  || fail "the desktop entry does not name the model MIME types"
[ -f /usr/share/mime/packages/headroom.xml ] || fail "the MIME types are not installed"
if command -v update-mime-database >/dev/null; then
  grep -q "application/x-safetensors:\*.safetensors" /usr/share/mime/globs2 \
    || fail "the MIME database does not know *.safetensors after installing"
fi
echo "package-check: ok (installed, ran from $work, desktop entry valid; removing)"
