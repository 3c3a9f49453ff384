#!/usr/bin/env bash
# Runs every test: unit and end-to-end tests of the whole workspace, then (when the app and Xvfb
# are available) a real window under Xvfb with a screenshot check.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh --test
cargo test --workspace --locked
if [ -f tools/screenshot.sh ]; then
  bash tools/screenshot.sh "${CARGO_TARGET_DIR:-target}/screenshot.png"
fi
