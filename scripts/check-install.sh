#!/usr/bin/env bash
# Installs a build into a temporary prefix and builds examples/text-to-image against it three ways:
# the CMake package's shared amused::amused, its static amused::amused_static, and pkg-config.
# Each program draws a picture with the tiny golden model. CTest runs it (InstalledPackage.*).
#   bash scripts/check-install.sh [BUILD_DIR]      # default: build
# The model: $AMUSED_GOLDEN_DIR/models/tiny-a (default ../shared/golden); missing, the check is
# skipped (exit 77) unless CI=true.
set -euo pipefail
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$(cd "${1:-$src/build}" && pwd)"
golden="${AMUSED_GOLDEN_DIR:-$src/../shared/golden}"
model="$golden/models/tiny-a"
if [ ! -f "$model/model_index.json" ]; then
  echo "the tiny golden model is missing: $model (set AMUSED_GOLDEN_DIR)" >&2
  [ "${CI:-}" = true ] && exit 1
  exit 77
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
prefix="$tmp/prefix"

step() { echo "== $*"; }
draws() {  # PROGRAM: runs it in a fresh folder and checks the PNG it writes
  local dir="$tmp/run-$(basename "$(dirname "$1")")"
  mkdir -p "$dir"
  (cd "$dir" && STEPS=2 "$1" "$model")
  [ -s "$dir/text-to-image.png" ] || { echo "$1 wrote no picture" >&2; exit 1; }
}

step "cmake --install $build --prefix $prefix"
cmake --install "$build" --prefix "$prefix" > "$tmp/install.log"
for f in bin/amused include/amused/amused.h; do
  [ -e "$prefix/$f" ] || { echo "not installed: $f" >&2; exit 1; }
done

for kind in shared static; do
  step "find_package(amused) -> $kind library"
  flag=OFF; [ $kind = static ] && flag=ON
  cmake -S "$src/examples/text-to-image" -B "$tmp/$kind" -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_BUILD_TYPE=Release -DAMUSED_STATIC=$flag > "$tmp/$kind-configure.log" ||
    { cat "$tmp/$kind-configure.log"; exit 1; }
  cmake --build "$tmp/$kind"
  draws "$tmp/$kind/text-to-image"
done

step "pkg-config amused"
pc="$(find "$prefix" -name amused.pc | head -1)"
[ -n "$pc" ] || { echo "amused.pc was not installed" >&2; exit 1; }
export PKG_CONFIG_PATH="$(dirname "$pc")"
mkdir -p "$tmp/pc"
# shellcheck disable=SC2046
c++ -std=c++17 -O1 $(pkg-config --cflags amused) "$src/examples/text-to-image/main.cpp" \
  $(pkg-config --libs amused) -o "$tmp/pc/text-to-image"
export LD_LIBRARY_PATH="$(pkg-config --variable=libdir amused)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
draws "$tmp/pc/text-to-image"
echo "ok: installed package builds and runs (shared, static, pkg-config)"
