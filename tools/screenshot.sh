#!/usr/bin/env bash
# Takes a screenshot of the real Headroom window under Xvfb and checks it is not blank.
#
#   tools/screenshot.sh [OUT.png] [BINARY]
#
# Starts Xvfb on a free display (DISPLAY_NUM picks one; installing xvfb, x11-apps, imagemagick and
# xdotool with apt-get if they are missing), runs the binary, waits for it to draw, takes
# `import -window root` of that display,
# checks the image's standard deviation is above a small threshold (a blank or single-colour
# screen fails), then asks the app to quit (Ctrl+Q through xdotool, else SIGTERM) and checks it
# exited. APP_ARGS are passed to the binary (e.g. a model path).
# GENERATE=N presses Ctrl+Enter N times first (the app opens with builtin:shapes loaded), waiting
# for each output (up to GEN_SECS seconds each), so the screenshot shows a finished run; with
# HEADROOM_FRAME_STATS=1 the app then prints its frame-time percentiles on exit, which this
# script shows. CLICKS="X,Y X,Y sleep,S …" then clicks those screen points in turn (a second
# apart) or waits S seconds, e.g. the Sweep tab, its Run button and the sweep's runs:
#   CLICKS="562,51 770,83 sleep,25" tools/screenshot.sh docs/sweep.png target/release/headroom
# The figures for the note:
#   GENERATE=3 HEADROOM_FRAME_STATS=1 tools/screenshot.sh /tmp/shot.png target/release/headroom
# Exits non-zero on any failure.
set -euo pipefail

OUT=${1:-screenshot.png}
BIN=${2:-${CARGO_TARGET_DIR:-target}/debug/headroom}
DISPLAY_NUM=${DISPLAY_NUM:-}
WAIT_SECS=${WAIT_SECS:-8}
MIN_STDDEV=${MIN_STDDEV:-0.02}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need Xvfb || ! need import || ! need identify || ! need xdotool; then
    echo "installing xvfb x11-apps imagemagick xdotool" >&2
    apt-get install -y --no-install-recommends xvfb x11-apps imagemagick xdotool >/dev/null
fi
[ -x "$BIN" ] || { echo "screenshot: $BIN is not built (cargo build -p headroom)" >&2; exit 1; }

RUNTIME=$(mktemp -d)
chmod 700 "$RUNTIME"
export XDG_RUNTIME_DIR=$RUNTIME
# A private data dir so the screenshot does not depend on (or change) the user's history.
export HEADROOM_DATA=${HEADROOM_DATA:-$RUNTIME/data}
export XDG_DATA_HOME=$RUNTIME/share

# Xvfb picks a free display itself and reports it (-displayfd), so two runs at once (another
# checkout's tests) never share one; DISPLAY_NUM forces a number.
if [ -n "$DISPLAY_NUM" ]; then
    Xvfb ":$DISPLAY_NUM" -screen 0 1440x900x24 -nolisten tcp >/dev/null 2>&1 &
else
    Xvfb -displayfd 3 -screen 0 1440x900x24 -nolisten tcp 3>"$RUNTIME/display" >/dev/null 2>&1 &
fi
XVFB=$!
APP=
cleanup() {
    [ -n "$APP" ] && kill "$APP" 2>/dev/null || true
    kill "$XVFB" 2>/dev/null || true
    rm -rf "$RUNTIME"
}
trap cleanup EXIT
if [ -z "$DISPLAY_NUM" ]; then
    for _ in $(seq 300); do [ -s "$RUNTIME/display" ] && break; sleep 0.1; done
    DISPLAY_NUM=$(head -n1 "$RUNTIME/display" 2>/dev/null || true)
    [ -n "$DISPLAY_NUM" ] || { echo "screenshot: Xvfb did not start" >&2; exit 1; }
fi
export DISPLAY=":$DISPLAY_NUM"
# a busy machine can take a while to bring the server up
for _ in $(seq 300); do xdpyinfo >/dev/null 2>&1 && break; sleep 0.1; done
xdpyinfo >/dev/null 2>&1 || { echo "screenshot: Xvfb on $DISPLAY does not answer" >&2; exit 1; }

# shellcheck disable=SC2086
"$BIN" ${APP_ARGS:-} >"$RUNTIME/app.log" 2>&1 &
APP=$!
# Wait for the window to appear and draw a few frames.
for _ in $(seq $((WAIT_SECS * 10))); do
    xdotool search --name Headroom >/dev/null 2>&1 && break
    kill -0 "$APP" 2>/dev/null || { echo "screenshot: the app exited early:" >&2; cat "$RUNTIME/app.log" >&2; exit 1; }
    sleep 0.1
done
sleep "$WAIT_SECS"
kill -0 "$APP" 2>/dev/null || { echo "screenshot: the app died:" >&2; cat "$RUNTIME/app.log" >&2; exit 1; }

# PNG outputs so far (the runs folder appears with the first one)
outputs() { { find "$HEADROOM_DATA" -name '*.png' -path '*runs*' 2>/dev/null || true; } | wc -l; }
BEFORE=$(outputs)  # a HEADROOM_DATA given from outside may hold runs already
for i in $(seq "${GENERATE:-0}"); do
    WIN=$(xdotool search --name Headroom | head -n1)
    xdotool windowfocus --sync "$WIN" 2>/dev/null || true
    xdotool key ctrl+Return
    for _ in $(seq $((${GEN_SECS:-120} * 10))); do
        [ "$(outputs)" -ge $((BEFORE + i)) ] && break
        sleep 0.1
    done
    [ "$(outputs)" -ge $((BEFORE + i)) ] || { echo "screenshot: run $i made no output in ${GEN_SECS:-120} s:" >&2; tail -n 20 "$RUNTIME/app.log" >&2; exit 1; }
    echo "screenshot: run $i done"
done
if [ "${GENERATE:-0}" -gt 0 ]; then sleep 2; fi
for c in ${CLICKS:-}; do
    x=${c%,*}
    y=${c#*,}
    if [ "$x" = sleep ]; then sleep "$y"; continue; fi
    xdotool mousemove "$x" "$y" click 1
    sleep 1
done

import -display "$DISPLAY" -window root "$OUT"
SD=$(identify -format '%[fx:standard_deviation]' "$OUT")
echo "screenshot: $OUT (standard deviation $SD)"
if ! awk -v sd="$SD" -v min="$MIN_STDDEV" 'BEGIN { exit !(sd > min) }'; then
    echo "screenshot: the screen looks blank (standard deviation $SD ≤ $MIN_STDDEV)" >&2
    exit 1
fi

# Ask the window to close like a window manager would; fall back to SIGTERM.
WIN=$(xdotool search --name Headroom | head -n1 || true)
if [ -n "$WIN" ]; then
    # Ctrl+Q is the app's Quit; with no window manager, focus the window and type it (XTEST).
    xdotool windowfocus --sync "$WIN" 2>/dev/null || true
    xdotool key ctrl+q 2>/dev/null || true
fi
for _ in $(seq 50); do kill -0 "$APP" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$APP" 2>/dev/null; then
    kill -TERM "$APP"
    for _ in $(seq 50); do kill -0 "$APP" 2>/dev/null || break; sleep 0.1; done
fi
if kill -0 "$APP" 2>/dev/null; then
    echo "screenshot: the app did not exit after a close request and SIGTERM" >&2
    exit 1
fi
set +e
wait "$APP"
RC=$?
set -e
APP=
if [ "$RC" -ne 0 ] && [ "$RC" -ne 143 ]; then
    echo "screenshot: the app exited with status $RC:" >&2
    tail -n 20 "$RUNTIME/app.log" >&2
    exit 1
fi
echo "screenshot: closed cleanly (status $RC)"
grep '^frames' "$RUNTIME/app.log" || true
