#!/usr/bin/env bash
# Measures the memory of the tray app, release build, on a virtual display:
# RSS of every process of the app (tillup-tray and all its descendants:
# tillup-window and WebKit's web and network processes) tray-only, with the
# window open, and after the window closes; for several open/close cycles.
#
#   scripts/tray-rss.sh [RUNS]        (default 3 runs of 2 cycles)
#
# env: SETTLE seconds before each reading (default 5), OPEN_SETTLE with the
# window open (default 8), CYCLES (default 2), OUT (default target/tray-rss).
# The window is opened as a second start of tillup-tray would (SIGUSR1) and
# closed by ending the tillup-window process (SIGTERM), which is what
# closing it does. The configured server does not answer: the readings are
# of an idle tray whose last check failed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" != "--inner" ]]; then
  cargo build --release -p tillup-tray -p tillup-window
  exec dbus-run-session -- xvfb-run -a -s "-screen 0 1280x1024x24" "$0" --inner "$@"
fi
shift
RUNS=${1:-3}
SETTLE=${SETTLE:-5}; OPEN_SETTLE=${OPEN_SETTLE:-8}; CYCLES=${CYCLES:-2}
OUT=${OUT:-target/tray-rss}; mkdir -p "$OUT"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/config.toml" <<TOML
server = "http://127.0.0.1:9"
public_key = "RWTFTZVoVDgNFXTvgzVQnMdyJZVlKh1AdLMJErqHxIdCnlZYPoZXFVGW"
store_id = "bench"
store_token = "t"
data_dir = "$tmp/data"
TOML
export HOME="$tmp"  # the webview's storage stays in the temporary folder

tree() { # pid -> pid and its descendants
  ps -e -o pid=,ppid= | awk -v r="$1" '{ kids[$2] = kids[$2] " " $1 }
    END { q[1]=r; n=1; i=1; while (i<=n) { p=q[i++]; print p; m=split(kids[p], a, " "); for (j=1;j<=m;j++) q[++n]=a[j] } }'
}
rss_mb() { # pid -> "MB processes"
  local total=0 n=0 r
  for p in $(tree "$1"); do
    r=$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null || true)
    [[ -n "$r" ]] || continue
    total=$((total + r)); n=$((n + 1))
  done
  awk -v kb="$total" -v n="$n" 'BEGIN { printf "%.1f %d", kb / 1024, n }'
}
wait_for() { local end=$((SECONDS + $1)); shift; until "$@"; do ((SECONDS < end)) || return 1; sleep 0.2; done; }

printf 'run\tstate\tRSS MB\tprocesses\n' | tee "$OUT/results.tsv"
for run in $(seq 1 "$RUNS"); do
  rm -rf "$tmp/data"
  target/release/tillup-tray --config "$tmp/config.toml" > "$OUT/run$run.log" 2>&1 &
  tray=$!
  sleep "$SETTLE"
  printf '%s\ttray only\t%s\n' "$run" "$(rss_mb $tray | tr ' ' '\t')" | tee -a "$OUT/results.tsv"
  for cycle in $(seq 1 "$CYCLES"); do
    kill -USR1 "$tray"
    wait_for 30 pgrep -P "$tray" -x tillup-window > /dev/null
    sleep "$OPEN_SETTLE"
    printf '%s\twindow open (%s)\t%s\n' "$run" "$cycle" "$(rss_mb $tray | tr ' ' '\t')" | tee -a "$OUT/results.tsv"
    pkill -TERM -P "$tray" -x tillup-window
    wait_for 30 bash -c "! pgrep -P $tray > /dev/null"
    sleep "$SETTLE"
    printf '%s\tafter close (%s)\t%s\n' "$run" "$cycle" "$(rss_mb $tray | tr ' ' '\t')" | tee -a "$OUT/results.tsv"
  done
  kill -TERM "$tray"; wait "$tray" || true
done
