#!/bin/bash
# usage: docs/evidence/autocost/bench_before_after.sh BEFORE_COMMIT AFTER_COMMIT THREADS
# Runs `bench_strategies.py 100 5000 3 reptile blend auto` (docs/evidence/learn/, as in the worktree
# now) on frozen copies of two commits' code (git archive into /tmp, first on PYTHONPATH), one after
# the other in this one run, so both meet the same machine.  THREADS goes to METASTREAM_TORCH_THREADS
# (torch's thread count; 2 is torch's default on this 2-core machine, 1 is what `metastream bench` uses).
set -e
before=$1; after=$2; threads=$3
bench=/tmp/autocost-bench-script-$$.py
cp docs/evidence/learn/bench_strategies.py $bench
for c in $before $after; do
  d=/tmp/autocost-bench-$c; rm -rf $d; mkdir -p $d
  git archive $c learners pipeline connectors | tar -x -C $d
done
for c in $before $after; do
  echo "\$ METASTREAM_TORCH_THREADS=$threads PYTHONPATH=/tmp/autocost-bench-$c .venv/bin/python docs/evidence/learn/bench_strategies.py 100 5000 3 reptile blend auto   # code of commit $c"
  echo "# started $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
  METASTREAM_TORCH_THREADS=$threads PYTHONPATH=/tmp/autocost-bench-$c:$PWD/docs/evidence/learn .venv/bin/python $bench 100 5000 3 reptile blend auto
done
