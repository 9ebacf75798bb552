#!/bin/bash
# usage: docs/evidence/learn/run_snapshot.sh NAME DATASET [evaluate args...]
# As run.sh, but on a frozen copy of a commit (git archive COMMIT into $SNAP, first on PYTHONPATH),
# so edits to the worktree during a long run do not leak into it.
name=$1; ds=$2; shift 2
out=docs/evidence/learn/$name-$ds.txt
cmd=".venv/bin/metastream evaluate $ds $* --seeds 0,1,2 --threads 1"
{ echo "\$ $cmd"; echo "# started $(date -u +%FT%TZ), code of commit $(cat $SNAP/COMMIT) (PYTHONPATH=$SNAP)"; } > $out
start=$(date +%s)
PYTHONPATH=$SNAP $cmd >> $out 2>&1
echo "# exit $? after $(( $(date +%s) - start ))s" >> $out
