#!/usr/bin/env bash
# Runs fuzz targets for MINUTES each (default 10), one after another, one core each.
# Usage: fuzz/run.sh [MINUTES] [TARGET...]   (targets default to all five)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(decode_stream decode_v5 topics config session)
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address); stable rustc takes them with this.
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/fuzz/target}
mkdir -p fuzz/logs
failed=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  echo "== $t: ${minutes} min, log in fuzz/logs/$t.log"
  set +e
  cargo fuzz run -O "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time=$((minutes * 60)) -print_final_stats=1 >"fuzz/logs/$t.log" 2>&1
  rc=$?
  set -e
  grep -E '^#[0-9]+ +DONE|stat::number_of_executed_units|SUMMARY|Test unit written|panicked' \
    "fuzz/logs/$t.log" || true
  if [ $rc -ne 0 ]; then failed+=("$t"); fi
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "FAILED: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
