#!/bin/sh
# One retraining round on a GPU (the `trainer` job in deploy/compose.yaml):
#   docker compose -f deploy/compose.yaml --profile train run --rm trainer
# 1. train a LoRA adapter on the current dataset (registered as a candidate),
# 2. evaluate it (stored in the registry),
# 3. promote it through the running bot: the promotion gate decides, and the bot hot-swaps it
#    on every vLLM replica (all or nothing). A failed gate or load leaves the live adapter.
# Extra arguments go to `llm4sweat train` (e.g. --max-steps 200).
set -eu
log=$(mktemp)
llm4sweat train "$@" | tee "$log"
version=$(sed -n 's/^Registered \([^ ]*\) as a candidate.*/\1/p' "$log" | tail -n 1)
rm -f "$log"
if [ -z "$version" ]; then
  echo "train-job: training registered no adapter" >&2
  exit 1
fi
llm4sweat eval --adapter "$version"
llm4sweat adapters promote "$version"
