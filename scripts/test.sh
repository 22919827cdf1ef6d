#!/usr/bin/env bash
# Builds (installing packages if needed) and runs the test suite, as CI does.
#   bash scripts/test.sh            # default suite (everything but the `slow` label)
#   bash scripts/test.sh -L slow    # extra ctest arguments, e.g. only the slow full-size tests
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${BUILD_DIR:-$here/build}"
bash "$here/scripts/setup.sh" --no-demo
cd "$build_dir"
if (($#)); then
  ctest --output-on-failure "$@"
else
  ctest --output-on-failure -LE slow -j "$(nproc)"
fi
