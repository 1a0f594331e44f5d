#!/bin/sh
# Builds the heat and ring MPI examples with mpicc.
#
#   examples/heat/build.sh [OUTDIR]      (default: this script's directory)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
mkdir -p "$out"
for prog in heat ring; do
	mpicc -std=c99 -O2 -Wall -Wextra -o "$out/$prog" "$here/$prog.c"
done
