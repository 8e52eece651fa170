#!/usr/bin/env bash
# Rebuild the corpus and train the shipped checkpoint suite: every recipe (model, budget, stream)
# lives in mor/training/presets.py, so `mor train --preset NAME` alone reproduces checkpoint NAME.
# Two runs at a time, one CPU thread each (a 2-core machine); each run resumes if restarted.
#   bash scripts/train_suite.sh                      # all of them
#   bash scripts/train_suite.sh vanilla mor-ec-r3    # some
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data}
OUT=${OUT:-checkpoints}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(vanilla mor-ec-r3 recursive-r3 mor-tc-r3 mor-ec-r3-kvshare mor-ec-r4 mor-ec-r3-sparse mor-ec-r3-probe)
[ -f "$DATA/tokenizer/tokenizer.json" ] || mor data --out "$DATA"
mkdir -p runs
train_one() {
  mor train --preset "$1" --out "$OUT/$1" --data "$DATA" --threads 1 --eval-every 100 > "runs/$1.log" 2>&1
}
for ((i = 0; i < ${#names[@]}; i += 2)); do
  train_one "${names[i]}" &
  if ((i + 1 < ${#names[@]})); then train_one "${names[i + 1]}" & fi
  wait
done
