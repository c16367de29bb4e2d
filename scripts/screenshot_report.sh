#!/usr/bin/env bash
# Render a report.html in headless Chromium to a PNG: scripts/screenshot_report.sh REPORT.html OUT.png
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 REPORT.html OUT.png" >&2
    exit 2
fi
report=$(realpath "$1")
out=$(realpath -m "$2")
[[ -f $report ]] || { echo "no such file: $1" >&2; exit 1; }

browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [[ -z $browser ]]; then
    echo "Chromium is not installed. On Debian/Ubuntu: apt-get update && apt-get install -y chromium" >&2
    exit 1
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --window-size=1280,2400 --screenshot="$out" "file://$report"
[[ -s $out ]] || { echo "Chromium wrote no screenshot to $out" >&2; exit 1; }
echo "$out"
