#!/usr/bin/env bash
# Fuzz Headroom's readers of untrusted files with cargo-fuzz (libFuzzer), one target after another.
#
#   bash tools/fuzz.sh [MINUTES] [TARGET...]     # default: 10 minutes each, every target
#   bash tools/fuzz.sh 3 png wav                 # three minutes each for two targets
#
# Targets (fuzz/fuzz_targets/): safetensors gguf ckpt pickle png wav profile a1111 comfy.
# Installs what it needs (the nightly toolchain through rustup, `cargo install cargo-fuzz
# --locked`), seeds each corpus from the repository's fixtures and models (fuzz/seed_corpus.py),
# builds every target once, then runs each for MINUTES at the lowest CPU priority. Each finding is
# saved under fuzz/artifacts/<target>/ (crash-*, timeout-*, oom-*) and fuzzing resumes until the
# time is spent (at most 10 findings a target). Replay one with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file> -O -a -s none
# Ends with one line per target (runs, findings) and exits 1 if anything was found. The corpora,
# artifacts, logs (fuzz/logs/) and fuzz/Cargo.lock (copied from the workspace's, so the readers
# are fuzzed with the versions the app ships) stay out of git.
#
# Build flags: release with debug assertions and overflow checks (-O -a), no sanitizer (-s none:
# the readers are safe Rust, and AddressSanitizer would slow every run), 16 codegen units (a
# quicker build on small machines). Per input: 10 s before it counts as a hang, 2 GiB of memory (the
# readers' own limits are far below: 32 MiB of PNG text, 512 MiB of pickle, 8192² decoded
# pixels), inputs up to 256 KiB.
set -euo pipefail

ALL=(safetensors gguf ckpt pickle png wav profile a1111 comfy)
MINUTES=10
if [[ $# -gt 0 && $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    MINUTES=$1
    shift
fi
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL[@]}")
for t in "${TARGETS[@]}"; do
    [[ " ${ALL[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target '$t' (known: ${ALL[*]})" >&2; exit 2; }
done
SECONDS_EACH=$(python3 -c "print(max(1, round($MINUTES * 60)))")

cd "$(dirname "$0")/.."
ROOT=$PWD

if ! command -v rustup >/dev/null; then
    echo "fuzz.sh: rustup is needed for the nightly toolchain (https://rustup.rs)" >&2
    exit 1
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# The workspace's lock file, so the fuzzed readers use the dependency versions the app ships
# (cargo adds libfuzzer-sys to the copy).
if [[ ! -f fuzz/Cargo.lock || Cargo.lock -nt fuzz/Cargo.lock ]]; then
    cp Cargo.lock fuzz/Cargo.lock
fi

FLAGS=(-O -a -s none --codegen-units 16)
echo "fuzz.sh: building ${#TARGETS[@]} target(s)…"
nice -n 19 cargo +nightly fuzz build "${FLAGS[@]}"

python3 fuzz/seed_corpus.py "${TARGETS[@]}"
mkdir -p fuzz/logs

SUMMARY=()
FOUND=0
for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/artifacts/$t"
    log="fuzz/logs/$t.log"
    : >"$log"
    echo "fuzz.sh: $t for ${SECONDS_EACH} s (log: $log)"
    start=$(date +%s)
    new=0
    # libFuzzer stops at a finding (saving it); start it again on the grown corpus until the time
    # is spent. (Fork mode would go on by itself, but ran ~50 times fewer inputs a second here.)
    while left=$((start + SECONDS_EACH - $(date +%s))); [[ $left -ge 5 ]]; do
        before=$(find "fuzz/artifacts/$t" -type f | wc -l)
        nice -n 19 cargo +nightly fuzz run "${FLAGS[@]}" "$t" "fuzz/corpus/$t" -- \
            -max_total_time="$left" -timeout=10 -rss_limit_mb=2048 -max_len=262144 \
            -print_final_stats=1 >>"$log" 2>&1 || true
        found=$(( $(find "fuzz/artifacts/$t" -type f | wc -l) - before ))
        new=$((new + found))
        if [[ $found -eq 0 || $new -ge 10 ]]; then
            break
        fi
    done
    took=$(( $(date +%s) - start ))
    runs=$(awk '/^stat::number_of_executed_units:/ { n += $2 } END { print n + 0 }' "$log")
    FOUND=$((FOUND + new))
    SUMMARY+=("$(printf '%-12s %5d s  %12s runs  %d new finding(s)  corpus %d files' \
        "$t" "$took" "$runs" "$new" "$(find "fuzz/corpus/$t" -type f | wc -l)")")
done

echo
echo "fuzz.sh: summary (findings are in fuzz/artifacts/<target>/)"
printf '  %s\n' "${SUMMARY[@]}"
[[ $FOUND -eq 0 ]]
