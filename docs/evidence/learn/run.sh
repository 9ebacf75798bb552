#!/bin/bash
# usage: docs/evidence/learn/run.sh NAME DATASET [evaluate args...] — saves docs/evidence/learn/NAME-DATASET.txt with the command on top
name=$1; ds=$2; shift 2
out=docs/evidence/learn/$name-$ds.txt
cmd=".venv/bin/metastream evaluate $ds $* --seeds 0,1,2 --threads 1"
{ echo "\$ $cmd"; echo "# started $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD)"; } > $out
start=$(date +%s)
$cmd >> $out 2>&1
echo "# exit $? after $(( $(date +%s) - start ))s" >> $out
