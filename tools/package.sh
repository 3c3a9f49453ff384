#!/usr/bin/env bash
# Builds Headroom's Linux package with cargo-packager (installed with `cargo install` if missing):
#   bash tools/package.sh                    # release build → target/packages/headroom_<version>_<arch>.deb
#   bash tools/package.sh --profile dev      # package the dev build instead
#   bash tools/package.sh --profile dev --no-build   # package the binary `cargo test` already built (CI)
#   bash tools/package.sh --appimage         # also try the AppImage (needs GitHub, see the README)
# The configuration is `[package.metadata.packager]` in ui/Cargo.toml. The binary is copied and
# stripped of debug info before packaging; the models, assets, icons, desktop entry and MIME
# types come from the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGER_VERSION=0.11.8
profile=release
appimage=0
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --appimage) appimage=1; shift ;;
    --no-build) build=0; shift ;;
    *) echo "headroom: package.sh: unknown option $1 (use --profile NAME, --no-build, --appimage)" >&2; exit 2 ;;
  esac
done
bash tools/install-deps.sh --package
if [ "$(cargo packager --version 2>/dev/null || true)" != "cargo-packager $PACKAGER_VERSION" ]; then
  echo "headroom: installing cargo-packager $PACKAGER_VERSION (cargo install, a few minutes)" >&2
  cargo install cargo-packager --locked --version "$PACKAGER_VERSION"
fi
target="${CARGO_TARGET_DIR:-$PWD/target}"
case "$profile" in
  dev) built="$target/debug" ;;
  *) built="$target/$profile" ;;
esac
if [ "$build" = 1 ]; then
  cargo build --locked -p headroom --profile "$profile"
elif [ ! -x "$built/headroom" ]; then
  echo "headroom: $built/headroom is not built (run without --no-build)" >&2
  exit 1
fi
# ui/Cargo.toml names these (cargo-packager 0.11.8 ignores its --binaries-dir option).
out="$PWD/target/packages"
stage="$out/bin"
mkdir -p "$stage"
cp "$built/headroom" "$stage/headroom"
strip --strip-debug "$stage/headroom"
rm -f "$out"/*.deb "$out"/*.AppImage
cargo packager -p headroom --formats deb
if [ "$appimage" = 1 ] && ! cargo packager -p headroom --formats appimage; then
  echo "headroom: no AppImage: cargo-packager downloads AppRun and linuxdeploy from GitHub (README, Install); the .deb is in $out" >&2
  exit 1
fi
ls -l "$out"/*.deb "$out"/*.AppImage 2>/dev/null || true
