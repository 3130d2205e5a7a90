#!/usr/bin/env bash
# The English text corpus glassbox trains and evaluates SAEs on, from two Debian packages:
#   - `fortunes` and `fortunes-min` (fortune-mod's quotations, jokes and literature excerpts;
#     1.2 MB of text, about 665k SmolLM2 tokens), one plain-text file per collection (the .dat
#     indexes and .u8 copies left out), in DIR;
#   - the Python documentation (`python3.X-doc`: the reStructuredText sources of the manual,
#     prose with code examples; 11 MB, about 2.9M SmolLM2 tokens), in DIR/python/.
# Downloaded with `apt-get download` (no root needed, nothing installed) and unpacked with
# dpkg-deb into DIR (default ~/.cache/glassbox/corpus/text).
#
#   scripts/fetch_corpus.sh [DIR]
#   glassbox sae train --corpus DIR --exclude science --exclude tutorial ...
#   glassbox sae eval --corpus DIR/science ...; glassbox sae eval --corpus DIR/python/tutorial ...
set -euo pipefail
DIR="${1:-${GLASSBOX_HOME:-$HOME/.cache/glassbox}/corpus/text}"
if [ -n "$(ls -A "$DIR" 2>/dev/null)" ] && [ -d "$DIR/python" ]; then
    echo "$DIR"
    exit 0
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# The versioned documentation package that python3-doc depends on (python3.11-doc on Debian 12).
PYDOC="$(apt-cache depends python3-doc 2>/dev/null | sed -n 's/^ *Depends: \(python3\.[0-9]*-doc\)$/\1/p' | head -n 1)"
(cd "$WORK" && apt-get download -qq fortunes fortunes-min ${PYDOC:+"$PYDOC"} >/dev/null 2>&1) || {
    echo "apt-get download fortunes fortunes-min $PYDOC failed (a Debian or Ubuntu package index is needed; run apt-get update)" >&2
    exit 1
}
if [ -z "$PYDOC" ]; then
    echo "no python3.X-doc package found (apt-cache depends python3-doc); run apt-get update" >&2
    exit 1
fi
for deb in "$WORK"/*.deb; do dpkg-deb -x "$deb" "$WORK/x"; done
mkdir -p "$DIR/python"
find "$WORK/x/usr/share/games/fortunes" -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' -exec cp {} "$DIR"/ \;
cp -r "$WORK/x/usr/share/doc/${PYDOC%-doc}/html/_sources/." "$DIR/python/"
echo "$DIR"
