#!/usr/bin/env bash
# The trained query encoders of benchmarks/results/query/corpus*.md, one after another (one torch job at a time).
# Each run is a step budget that resumes from its checkpoints: rerun this script after a stop and add --resume to the
# run that was cut off. Models go under runs/qe/ (git-ignored).
#
#   bash benchmarks/query/corpus_runs.sh [scifact|nfcorpus|inits|eval]...
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$(dirname "$0")/../.."
fit() { python -m st_leap fit-query-encoder minilm "$@"; }
data=../shared/data/beir
for part in "${@:-scifact inits eval}"; do
  case "$part" in
    scifact)   # the default recipe (init "first", 1,000 steps, dev every 250): the learning curve and the minutes
      fit --corpus "$data/scifact" --depth 3 --out runs/qe/scifact_d3 ;;
    nfcorpus)
      fit --corpus "$data/nfcorpus" --depth 3 --out runs/qe/nfcorpus_d3 ;;
    d2)
      fit --corpus "$data/scifact" --depth 2 --out runs/qe/scifact_d2
      fit --corpus "$data/nfcorpus" --depth 2 --out runs/qe/nfcorpus_d2 ;;
    inits)     # the other initialisations on the same 1,000-step schedule, stopped at step 250 (compared on dev
               # with the default run's step-250 evaluation)
      fit --corpus "$data/scifact" --depth 3 --init spread --stop-at-step 250 --out runs/qe/scifact_d3_spread_250
      fit --corpus "$data/scifact" --depth 3 --init leap --stop-at-step 250 --out runs/qe/scifact_d3_leap_250 ;;
    eval)      # dev and test NDCG@10 per depth of what trained, the learning curves
      python -m benchmarks.query.corpus --phases eval --tasks scifact \
        --only "trained d3" --only "spread, 250 steps" --only "leap, 250 steps" \
        --encoder "scifact:trained d3=runs/qe/scifact_d3" \
        --encoder "scifact:spread, 250 steps=runs/qe/scifact_d3_spread_250" \
        --encoder "scifact:leap, 250 steps=runs/qe/scifact_d3_leap_250"
      python -m benchmarks.query.inits runs/qe/scifact_d3 runs/qe/scifact_d3_spread_250 runs/qe/scifact_d3_leap_250 ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
