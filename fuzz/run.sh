#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 15) and fails on the
# first crash, panic (overflow checks on), hang (10 s per input) or use of
# more than 2 GiB.
#
#   fuzz/run.sh            # CI: 15 s per target
#   fuzz/run.sh 3600       # by hand: an hour per target
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). cargo-fuzz passes
# nightly-only flags to rustc; RUSTC_BOOTSTRAP=1 lets a stable toolchain take
# them. FUZZ_SANITIZER=address adds AddressSanitizer (slower; the code under
# test forbids `unsafe`, so the default is none). FUZZ_KEEP_CORPUS=1 keeps the
# inputs found in fuzz/corpus/<target> (git-ignored) for the next run;
# otherwise they go to a scratch folder and only the committed seeds in
# fuzz/seeds/<target> are reused. A crashing input is saved in
# fuzz/artifacts/<target>/: replay it with `cargo fuzz run <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-15}
sanitizer=${FUZZ_SANITIZER:-none}
export RUSTC_BOOTSTRAP=1

command -v cargo-fuzz >/dev/null || {
  echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
  exit 1
}

# One build for every target; each run below then finds it up to date.
cargo fuzz build -s "$sanitizer" --debug-assertions

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
  if [[ ${FUZZ_KEEP_CORPUS:-} == 1 ]]; then
    corpus=corpus/$target
  else
    corpus=$scratch/$target
  fi
  mkdir -p "$corpus" "seeds/$target"
  echo "== fuzz $target for ${secs}s"
  if ! cargo fuzz run -s "$sanitizer" --debug-assertions "$target" "$corpus" "seeds/$target" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$scratch/$target.log" 2>&1; then
    tail -n 60 "$scratch/$target.log" >&2
    echo "fuzz: $target crashed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units|^Done' "$scratch/$target.log" || true
done
echo "fuzz: every target ran ${secs}s without a crash"
