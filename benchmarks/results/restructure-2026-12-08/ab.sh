#!/bin/bash
# Interleaved A/B of `travel bench speed` (defaults), before (b: /tmp/base, the restructure's parent) and after (a: /work/main)
out=/tmp/ab; mkdir -p $out
for round in ${ROUNDS:-1 2}; do
  for size in ${SIZES:-64 128}; do
    for side in before after; do
      if [ $side = before ]; then root=/tmp/base; else root=/work/main; fi
      (cd /tmp && PYTHONPATH=$root python -m travel bench speed --size $size --threads 2 --steps 10 --warmup 3 --json $out/$side-$size-$round.json > $out/$side-$size-$round.txt 2>&1)
      python3 -c "import json;r=json.load(open('$out/$side-$size-$round.json'));print('$side', $size, $round, round(r['train']['images_per_s'],3), round(r['train']['flops_per_image']/1e9,3))"
    done
  done
done
