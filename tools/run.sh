#!/usr/bin/env bash
# Builds Headroom (release) and opens the desktop app on the embedded default model.
# Extra arguments go to the app: model or output files to open, or a subcommand.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
exec cargo run --release --locked -p headroom -- "$@"
