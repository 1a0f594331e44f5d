#!/bin/sh
# Heat diffusion as an MPI gang job: builds heat, puts it in the DFS, runs
# heat.yaml (6 ranks on the 3 nodes of cluster c1, checkpointing as it
# goes), prints the launcher's output and checks the checksum against the
# same computation run here with plain mpirun.
#
#   SHOAL=./shoal examples/heat/run.sh
#
# Needs a running installation (`shoal dev`), mpicc and mpirun (Open MPI) on
# this machine and on the nodes.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
SHOAL=${SHOAL:-shoal}
ranks=6 # as in heat.yaml
tmp=$(mktemp -d "${TMPDIR:-/tmp}/shoal-heat.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

"$here/build.sh" "$tmp"
if ! $SHOAL cluster status c1 >/dev/null 2>&1; then
	$SHOAL cluster create c1 --nodes 3 --zones 3
fi
$SHOAL fs put -f "$tmp/heat" /clusters/c1/heat

status=0
$SHOAL job run --wait "$here/heat.yaml" > "$tmp/run.out" || status=$?
cat "$tmp/run.out"                                    # Job heat-<index> complete: ...
job=$(awk '/^Job /{print $2; exit}' "$tmp/run.out")
[ -n "$job" ] || exit 1
$SHOAL job logs "$job" --task 0 | tee "$tmp/logs"     # task 0 runs mpirun: every rank's output
[ "$status" -eq 0 ] || exit "$status"

# The same run here, without Shoal, checkpoints or sleeps: same checksum,
# even if the job was restarted from a checkpoint on the way.
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
	mpirun --oversubscribe -np "$ranks" --mca btl tcp,self "$tmp/heat" --steps 4000 > "$tmp/local"
want=$(grep '^checksum ' "$tmp/local")
if [ "$(grep '^checksum ' "$tmp/logs")" = "$want" ]; then
	echo "heat: $want matches a local run"
else
	echo "heat: checksum DIFFERS from a local run ($want)" >&2
	exit 1
fi
