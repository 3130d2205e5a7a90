#!/usr/bin/env bash
# The English text corpus glassbox trains and evaluates SAEs on: Debian's `fortunes` and
# `fortunes-min` packages (fortune-mod's quotations, jokes and literature excerpts; about 1.2 MB
# of text, ~330k SmolLM2 tokens). Downloaded with `apt-get download` (no root needed, nothing
# installed) and unpacked with dpkg-deb into DIR (default ~/.cache/glassbox/corpus/fortunes),
# one plain-text file per fortune collection (the .dat indexes and .u8 copies left out).
#
#   scripts/fetch_corpus.sh [DIR]
#   glassbox sae train --corpus DIR --exclude science ...; glassbox sae eval --corpus DIR/science ...
set -euo pipefail
DIR="${1:-${GLASSBOX_HOME:-$HOME/.cache/glassbox}/corpus/fortunes}"
if [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
    echo "$DIR"
    exit 0
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && apt-get download -qq fortunes fortunes-min >/dev/null 2>&1) || {
    echo "apt-get download fortunes fortunes-min failed (a Debian or Ubuntu package index is needed; run apt-get update)" >&2
    exit 1
}
for deb in "$WORK"/*.deb; do dpkg-deb -x "$deb" "$WORK/x"; done
mkdir -p "$DIR"
find "$WORK/x/usr/share/games/fortunes" -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' -exec cp {} "$DIR"/ \;
echo "$DIR"
