#!/usr/bin/env bash
# Takes a fresh Debian 12 machine to a built amused.cpp (Release), then runs a demo.
# Safe to run again: apt skips what is installed, CMake rebuilds only what changed.
#
#   bash scripts/setup.sh            # install packages, build, run the demo
#   bash scripts/setup.sh --no-demo  # install packages and build only
#   BUILD_DIR=build-x JOBS=4 bash scripts/setup.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${BUILD_DIR:-$here/build}"
jobs="${JOBS:-$(nproc)}"
demo=1
for arg in "$@"; do
  case "$arg" in
    --no-demo) demo=0 ;;
    *) echo "setup.sh: unknown option '$arg' (known: --no-demo)" >&2; exit 2 ;;
  esac
done

packages=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev            # LibTorch 1.13 (CPU)
  libopenblas-dev         # fast BLAS for LibTorch (the reference BLAS is ~30x slower)
  nlohmann-json3-dev libcli11-dev libutf8proc-dev libpng-dev libjpeg-dev libstb-dev
  libcurl4-openssl-dev libcpp-httplib-dev libssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libfreetype-dev libharfbuzz-dev   # `amused dataset emoji`: colour glyphs, emoji sequences
  libwebp-dev             # `amused generate --save-steps`: animated WebP of the steps
  fonts-noto-color-emoji unicode-data unicode-cldr-core  # its images and captions (offline data)
  fonts-dejavu-core       # the labels of `amused generate --attention-maps` sheets
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> installing: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "==> all packages present"
fi

# LibTorch must run its BLAS calls through OpenBLAS, not the reference BLAS.
blas_target="$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || true)"
case "$blas_target" in
  *openblas*) echo "==> BLAS: $blas_target" ;;
  *)
    echo "==> selecting OpenBLAS as the system BLAS (was: ${blas_target:-none})"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    alt="$(update-alternatives --list libblas.so.3-x86_64-linux-gnu | grep openblas | head -n1)"
    "${sudo_cmd[@]}" update-alternatives --set libblas.so.3-x86_64-linux-gnu "$alt"
    alt="$(update-alternatives --list liblapack.so.3-x86_64-linux-gnu | grep openblas | head -n1 || true)"
    [ -z "$alt" ] || "${sudo_cmd[@]}" update-alternatives --set liblapack.so.3-x86_64-linux-gnu "$alt"
    ;;
esac

echo "==> configuring ($build_dir)"
cmake -S "$here" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
echo "==> building with $jobs jobs"
cmake --build "$build_dir" -j "$jobs"

if ((demo)); then
  bash "$here/scripts/demo.sh" "$build_dir"
fi
