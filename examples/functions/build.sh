#!/bin/sh
# build.sh OUTDIR: builds the function examples' bundles into OUTDIR:
# hello.zip (examples/functions/hello-go, an aws-lambda-go program built as
# a static binary named bootstrap) and hello-sh.zip (the shell bootstrap).
set -eu
out=$(cd "${1:?usage: build.sh OUTDIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd -P)  # physical, so that go finds go.mod above it
(cd "$here/hello-go" && CGO_ENABLED=0 go build -o "$out/bootstrap" .)
(cd "$out" && rm -f hello.zip && zip -q hello.zip bootstrap && rm bootstrap)
(cd "$here/hello-sh" && rm -f "$out/hello-sh.zip" && zip -q "$out/hello-sh.zip" bootstrap)
echo "$out/hello.zip $out/hello-sh.zip"
