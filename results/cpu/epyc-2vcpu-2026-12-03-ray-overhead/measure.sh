#!/bin/bash
# interleaved: local, ray, local, ray, local, ray — the smoke suite, every default implementation
cd /work/main
for i in 1 2 3; do
  for ex in local ray; do
    rm -rf /tmp/m/$ex-$i
    s=$(date +%s.%N)
    .nox/convbench/bin/python -m bench run --suite smoke --executor $ex --no-report --no-progress --out /tmp/m/$ex-$i > /tmp/m/$ex-$i.log 2>&1
    rc=$?
    e=$(date +%s.%N)
    echo "$ex $i rc=$rc wall=$(echo "$e - $s" | bc)"
  done
done
