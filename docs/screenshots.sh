#!/usr/bin/env bash
# Remakes the README's screenshots (docs/screenshots/*.png) with the real
# tray, window, server and agents: the window end-to-end test, once per language,
# and the dashboard's browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup --cjk
cargo build --workspace --bins
for lang in en zh-CN; do
  TILLUP_SCREENSHOTS="$PWD/docs/screenshots" TILLUP_SCREENSHOT_LANG=$lang \
    cargo test -p tillup-e2e --test window the_popup_asks
done
# Head office's dashboard, both languages in one run.
TILLUP_SCREENSHOTS="$PWD/docs/screenshots" cargo test -p tillup-e2e --test dashboard
ls -l docs/screenshots
