#!/usr/bin/env bash
# Run the fuzz targets, each for SECONDS (default 600), with the budgets drawbridge promises:
# at most 2 GiB of memory for the whole process (-rss_limit_mb) and one allocation of at most
# 64 MiB (-malloc_limit_mb), at most 10 s for one input (-timeout). New inputs go to
# fuzz/out/TARGET; seeds are in fuzz/corpus/TARGET; a crash is left in fuzz/artifacts/TARGET
# and must become a file in fuzz/regressions/TARGET (replayed by `cargo test`).
#
#   fuzz/run.sh [SECONDS] [TARGET ...]      targets: framer machine component preauth config control
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(framer machine component preauth config control)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
for t in "${targets[@]}"; do
  mkdir -p "out/$t" "artifacts/$t"
  echo "fuzz: $t for ${secs}s"
  cargo +nightly fuzz run -O "$t" "out/$t" "corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=64 -timeout=10 \
    -max_len=300000 -artifact_prefix="artifacts/$t/" -print_final_stats=1
done
