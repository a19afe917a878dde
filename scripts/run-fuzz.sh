#!/usr/bin/env bash
# Run every libFuzzer target built in BUILDDIR for SECONDS each.
# Seeds come from tests/fuzz/corpus/<name>/ (read only); new inputs go to
# BUILDDIR/fuzz-corpus/<name>/ and crashes to BUILDDIR/fuzz-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
builddir=${1:-build-fuzz}
seconds=${2:-60}

mapfile -t targets < <(meson introspect "$builddir" --targets | python3 -c '
import json, sys
for t in json.load(sys.stdin):
    if t["type"] == "executable" and "/tests/fuzz/" in t["defined_in"]:
        print(t["name"] + " " + t["filename"][0])
')

if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz: no fuzz targets defined in tests/fuzz/meson.build"
  exit 0
fi

failed=0
mkdir -p "$builddir/fuzz-artifacts"
for entry in "${targets[@]}"; do
  name=${entry%% *}
  exe=${entry#* }
  seeds=tests/fuzz/corpus/$name
  work=$builddir/fuzz-corpus/$name
  mkdir -p "$work"
  dirs=("$work")
  [ -d "$seeds" ] && dirs+=("$seeds")
  echo "fuzz: $name for ${seconds}s"
  if "$exe" -max_total_time="$seconds" -print_final_stats=1 \
       -artifact_prefix="$builddir/fuzz-artifacts/$name-" \
       "${dirs[@]}" >"$builddir/fuzz-artifacts/$name.log" 2>&1; then
    echo "fuzz: $name ok ($(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' \
         "$builddir/fuzz-artifacts/$name.log" | grep -o '[0-9]*$') runs)"
  else
    echo "fuzz: $name FAILED; log follows"
    tail -n 60 "$builddir/fuzz-artifacts/$name.log"
    failed=$((failed + 1))
  fi
done
echo "fuzz: $(( ${#targets[@]} - failed )) passed, $failed failed"
[ "$failed" -eq 0 ]
