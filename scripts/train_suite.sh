#!/usr/bin/env bash
# Rebuild the corpus and train the shipped checkpoint suite at one training-FLOPs budget.
# Two runs at a time, one CPU thread each (a 2-core machine); each run resumes if restarted.
#   bash scripts/train_suite.sh            # all eight
#   BUDGET=3e13 bash scripts/train_suite.sh vanilla mor-ec-r3
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=${BUDGET:-7.5e13}
DATA=${DATA:-data}
# MoR checkpoints: straight-through gate and a stronger BCE weight (see docs/results.md for why).
MOR_FLAGS=(--set router_gate=straight_through --set router_aux_loss_coef=0.01)
declare -A EXTRA=(
  [vanilla]="" [recursive-r3]=""
  [mor-ec-r3]="${MOR_FLAGS[*]}" [mor-tc-r3]="--set router_gate=straight_through"
  [mor-ec-r3-kvshare]="${MOR_FLAGS[*]}" [mor-ec-r4]="${MOR_FLAGS[*]}" [mor-ec-r3-lean]="${MOR_FLAGS[*]}" [mor-ec-r3-sparse]="${MOR_FLAGS[*]}"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(vanilla mor-ec-r3 recursive-r3 mor-tc-r3 mor-ec-r3-kvshare mor-ec-r4 mor-ec-r3-lean mor-ec-r3-sparse)
[ -f "$DATA/tokenizer/tokenizer.json" ] || mor data --out "$DATA"
mkdir -p runs
train_one() {
  local name=$1
  # shellcheck disable=SC2086
  mor train --preset "$name" --out "checkpoints/$name" --data "$DATA" --flops-budget "$BUDGET" \
    --threads 1 ${EXTRA[$name]} > "runs/$name.log" 2>&1
}
for ((i = 0; i < ${#names[@]}; i += 2)); do
  train_one "${names[i]}" &
  if ((i + 1 < ${#names[@]})); then train_one "${names[i + 1]}" & fi
  wait
done
