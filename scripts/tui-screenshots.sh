#!/usr/bin/env bash
# Text screenshots of every dashboard view, taken from a running daemon, into docs/screenshots/.
#
# Usage: scripts/tui-screenshots.sh [--socket PATH | --config FILE] [--bin PATH] [--out DIR]
#
# Needs tmux and a daemon that is already running and has screened at least one series (for the
# Results, series and slice views). It starts `ctmask tui` in a detached 120x40 tmux session,
# walks the views with send-keys and saves `tmux capture-pane -p` of each as NAME.txt (with
# ANSI=1 also NAME.ansi, with colours, for `cat` in a terminal). The disconnected view comes from
# a second dashboard pointed at a socket where nothing listens; the daemon is never touched.
# The same names are rendered from a fixed snapshot by the unit tests
# (CTMASK_TUI_FIXTURES=write cargo test tui::snapshots); this script replaces them with real ones.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${CTMASK_BIN:-$root/target/release/ctmask}"
out="$root/docs/screenshots"
delay="${DELAY:-1.5}"
target=()

usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --socket | --config) target=("$1" "$2"); shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

command -v tmux >/dev/null || { echo "tmux is needed" >&2; exit 1; }
if [ ! -x "$bin" ]; then
    bin="$(command -v ctmask || true)"
    [ -n "$bin" ] || { echo "no ctmask binary: build it (cargo build --release) or pass --bin" >&2; exit 1; }
fi
mkdir -p "$out"

session="ctmask-shots-$$"
cleanup() { tmux kill-session -t "$session" 2>/dev/null || true; }
trap cleanup EXIT

# start COMMAND...: a fresh 120x40 session running the dashboard.
start() {
    cleanup
    tmux new-session -d -s "$session" -x 120 -y 40 "$(printf '%q ' "$@")"
    sleep 2 # connect and fetch the first status
}
# keys KEY...: one at a time, so that Escape and the next key do not arrive as one Alt chord.
keys() {
    for k in "$@"; do
        tmux send-keys -t "$session" "$k"
        sleep 0.2
    done
}
shot() {
    sleep "$delay"
    tmux capture-pane -p -t "$session" >"$out/$1.txt"
    if [ -n "${ANSI:-}" ]; then tmux capture-pane -p -e -t "$session" >"$out/$1.ansi"; fi
    echo "wrote $out/$1.txt"
}

start "$bin" tui "${target[@]}"
shot queue
keys Enter
shot queue-job
keys Escape / f a i l e d Enter r
shot queue-retry
keys n Escape
keys 2
shot results
keys / c o v i d
shot results-filter
keys Escape Enter
shot series
keys Down Enter
shot slice
keys Escape Escape 3
shot gpu
keys 4
shot log
keys ?
shot help
keys Escape q

# Nothing listens here: the dashboard says so and keeps retrying.
nowhere="$(mktemp -d)/ctmask.sock"
start "$bin" tui --socket "$nowhere"
shot disconnected
keys q
