#!/usr/bin/env bash
# Builds (installing packages if needed) and runs the test suite, as CI does.
#   bash scripts/test.sh            # the whole suite, the full-size `slow` tests included (~80 s of it)
#   bash scripts/test.sh -LE slow   # extra ctest arguments, e.g. without the slow full-size tests
#   bash scripts/test.sh -L slow    # or only them
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${BUILD_DIR:-$here/build}"
bash "$here/scripts/setup.sh" --no-demo
cd "$build_dir"
if (($#)); then
  ctest --output-on-failure "$@"
else
  # Unit and golden tests in parallel; the full-size `slow` ones run alone (RUN_SERIAL).
  ctest --output-on-failure -j "$(nproc)"
fi
