#!/bin/sh
# Word count on Shoal's DFS: puts a text corpus into the DFS, runs one map
# task per file (placed next to a replica) and a reduce task, and checks
# the result against the same count done locally.
#
#   SHOAL=./shoal examples/wordcount/run.sh [CORPUS_DIR]
#
# Needs a running installation (`shoal dev`) with an idle node in each of 3
# zones (the dev pool provider keeps one per zone).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
SHOAL=${SHOAL:-shoal}
corpus=${1:-/usr/share/common-licenses}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/shoal-wordcount.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

if ! $SHOAL cluster status wc >/dev/null 2>&1; then
	$SHOAL cluster create wc --nodes 3 --zones 3
fi
$SHOAL fs rm -r /clusters/wc/corpus /clusters/wc/counts /clusters/wc/result 2>/dev/null || true
$SHOAL fs mkdir -p /clusters/wc/corpus
for f in "$corpus"/*; do
	[ -f "$f" ] && [ ! -L "$f" ] && $SHOAL fs put "$f" "/clusters/wc/corpus/$(basename "$f")"
done
echo "corpus: $($SHOAL fs ls /clusters/wc/corpus -o json | grep -c '"path"') files"

$SHOAL job run --wait "$here/map.yaml"
$SHOAL job run --wait "$here/reduce.yaml"

$SHOAL fs cat /clusters/wc/result/wordcount.txt > "$tmp/wordcount.txt"
for f in "$corpus"/*; do [ -f "$f" ] && [ ! -L "$f" ] && cat "$f"; done |
	tr -cs 'A-Za-z' '\n' | tr 'A-Z' 'a-z' | grep . | sort | uniq -c |
	awk '{print $1, $2}' | sort -k1,1nr -k2,2 > "$tmp/expected.txt"
head -5 "$tmp/wordcount.txt"
if cmp -s "$tmp/wordcount.txt" "$tmp/expected.txt"; then
	echo "word count matches a local count ($(wc -l < "$tmp/wordcount.txt") distinct words)"
else
	echo "word count DIFFERS from a local count" >&2
	exit 1
fi
