#!/usr/bin/env bash
# Builds the workspace with the `cuda` feature (candle's CUDA back end and cuDNN) on a machine with
# no GPU and no CUDA toolkit, so code behind `#[cfg(feature = "cuda")]` is compiled and linted:
#   bash tools/cuda-build.sh                  # build, start the binary, clippy (warnings and bugs), test --no-run
#   bash tools/cuda-build.sh --build-only     # cargo build and the start check only
#   CUDA_COMPUTE_CAP=89 bash tools/cuda-build.sh   # kernels for another GPU (default 80, sm_80)
# nvcc, CUDA's headers and libraries come from NVIDIA's PyPI wheels (CUDA 13.4: only the CUDA 13
# wheels carry nvcc itself; the -cu12 ones ship ptxas alone) installed into a venv at
# ${CUDA_VENV:-~/.cache/headroom-cuda} (about 2.2 GB), never into the repository. The driver library
# libcuda.so is not in any wheel: a stub with the driver API's names is linked in its place, so the
# binaries record libcuda.so.1 and run where an NVIDIA driver (580 or newer) is installed, with the
# wheels' lib/ folder on LD_LIBRARY_PATH. Output goes to ${CARGO_TARGET_DIR:-target/cuda}.
# Needs python3 with venv, a C compiler (gcc, g++ for nvcc's host code) and cargo; no root.
# The last line says ok, or which step failed.
set -euo pipefail
cd "$(dirname "$0")/.."

# One CUDA release's wheels (13.4 update 1), pinned together; cudarc 0.19 knows CUDA up to 13.4.
WHEELS=(
  nvidia-cuda-nvcc==13.4.92 nvidia-cuda-crt==13.4.92 nvidia-nvvm==13.4.92
  nvidia-cuda-runtime==13.4.92 nvidia-cuda-nvrtc==13.4.92 nvidia-cuda-cccl==13.3.4.3.1
  nvidia-cublas==13.8.0.4 nvidia-curand==10.4.4.72 nvidia-cudnn-cu13==9.27.0.42
)
FEATURES="headroom/cuda"

build_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build-only) build_only=1; shift ;;
    *) echo "headroom: cuda-build.sh: unknown option $1 (use --build-only)" >&2; exit 2 ;;
  esac
done

venv="${CUDA_VENV:-$HOME/.cache/headroom-cuda}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/cuda}"
fail() { echo "headroom: cuda-build: FAILED: $*" >&2; exit 1; }

# 1. The wheels, installed once (again when the pinned list changes).
stamp="$venv/.headroom-wheels"
if [ ! -x "$venv/bin/pip" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${WHEELS[*]}" ]; then
  echo "headroom: installing CUDA wheels into $venv (about 2.2 GB)" >&2
  python3 -m venv "$venv" || fail "python3 -m venv (on Debian: apt-get install python3-venv, as root)"
  "$venv/bin/pip" install --no-cache-dir --disable-pip-version-check -q "${WHEELS[@]}" \
    || fail "pip install of the CUDA wheels"
  echo "${WHEELS[*]}" > "$stamp"
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cu="$site/nvidia/cu13"
[ -x "$cu/bin/nvcc" ] || fail "no nvcc in $cu/bin (remove $venv and run again)"

# 2. A toolkit folder in the usual layout (bin, include, nvvm, lib, lib/stubs) over the wheels, with
# the unversioned library names the linker asks for (-lcublas, -lcudnn, ...).
tk="$venv/toolkit"
rm -rf "$tk" && mkdir -p "$tk/lib/stubs"
for d in bin include nvvm; do ln -s "$cu/$d" "$tk/$d"; done
for f in "$cu"/lib/lib*.so.* "$site"/nvidia/cudnn/lib/lib*.so.*; do
  ln -s "$f" "$tk/lib/$(basename "$f")"
  ln -sf "$f" "$tk/lib/$(basename "$f" | sed 's/\.so\..*/.so/')"
done
# The driver stub: every cu* name in cuda.h and in cudarc's bindings, as empty functions.
cudarc_sys="$(cargo metadata --format-version 1 --locked --features "$FEATURES" 2>/dev/null \
  | "$venv/bin/python" -c 'import json,sys,os
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc": print(os.path.join(os.path.dirname(p["manifest_path"]), "src/driver/sys/mod.rs"))' \
  || true)"
{ grep -ohE '\bcu[A-Z][A-Za-z0-9_]*' "$cu/include/cuda.h"
  if [ -f "$cudarc_sys" ]; then grep -ohE '^pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc_sys" | awk '{print $4}'; fi
} | sort -u | awk '{print "int " $1 "(void) { return 100; }"}' > "$tk/lib/stubs/libcuda.c"
cc -shared -fPIC -w -Wl,-soname,libcuda.so.1 -o "$tk/lib/stubs/libcuda.so" "$tk/lib/stubs/libcuda.c" \
  || fail "compiling the libcuda stub"
mkdir -p "$tk/lib/stubs/run" && cp "$tk/lib/stubs/libcuda.so" "$tk/lib/stubs/run/libcuda.so.1"

export CUDA_ROOT="$tk" CUDA_PATH="$tk" CUDA_HOME="$tk"
export PATH="$tk/bin:$PATH"
export CPATH="$tk/include${CPATH:+:$CPATH}"
export LIBRARY_PATH="$tk/lib:$tk/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
echo "headroom: $(nvcc --version | tail -2 | head -1); sm_$CUDA_COMPUTE_CAP; target $CARGO_TARGET_DIR" >&2

# 3. The builds.
steps="build, start"
cargo build --workspace --locked --features "$FEATURES" || fail "cargo build --workspace --features $FEATURES"
# The binary loads: every library it records is found in the wheels (the stub answers "no device").
LD_LIBRARY_PATH="$tk/lib:$tk/lib/stubs/run" "$CARGO_TARGET_DIR/debug/headroom" --help >/dev/null \
  || fail "the built binary does not start with the wheels' libraries (ldd $CARGO_TARGET_DIR/debug/headroom)"
if [ "$build_only" -eq 0 ]; then
  # Rustc's warnings and clippy's bug-finding groups fail the build; clippy's style, complexity
  # and perf groups are the whole project's business (the default build has its own), so they are
  # off here: CLIPPY_LINTS="-D warnings" bash tools/cuda-build.sh shows them all.
  read -r -a lints <<< "${CLIPPY_LINTS:--D warnings -A clippy::all -D clippy::correctness -D clippy::suspicious}"
  cargo clippy --workspace --all-targets --locked --features "$FEATURES" -- "${lints[@]}" \
    || fail "cargo clippy --workspace --all-targets --features $FEATURES -- ${lints[*]}"
  cargo test --workspace --locked --features "$FEATURES" --no-run \
    || fail "cargo test --workspace --features $FEATURES --no-run"
  steps="build, start, clippy, test --no-run"
fi
echo "headroom: cuda-build: ok ($steps; CUDA 13.4 wheels, cuDNN 9.27, sm_$CUDA_COMPUTE_CAP)"
