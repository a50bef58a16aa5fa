#!/usr/bin/env bash
# Remakes the README's screenshots (docs/screenshots/*.png) with the real
# tray, window, server and agents: the window end-to-end test, once per language.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup --cjk
cargo build --workspace --bins
for lang in en zh-CN; do
  TILLUP_SCREENSHOTS="$PWD/docs/screenshots" TILLUP_SCREENSHOT_LANG=$lang \
    cargo test -p tillup-e2e --test window the_popup_asks
done
ls -l docs/screenshots
