#!/usr/bin/env bash
# The trained query encoders of benchmarks/results/query/{corpus,inits}.md, one after another (one torch job at a
# time). Each run is a step budget that resumes from its checkpoints: after a stop, rerun the cut-off command with
# --resume. Models go under runs/qe/ (git-ignored); the index model's passes are cached in the st_leap cache, so the
# runs after the first of a corpus skip them.
#
#   bash benchmarks/query/corpus_runs.sh [scifact] [inits] [nfcorpus] [eval] [d2] [defaults]   (default: all six)
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$(dirname "$0")/../.."
fit() { python -m st_leap fit-query-encoder minilm "$@"; }
data=../shared/data/beir
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(scifact inits nfcorpus eval d2 defaults)
for part in "${parts[@]}"; do
  case "$part" in
    scifact)   # the default recipe (init "spread", 1,000 steps, dev every 250): the learning curve and the minutes
      fit --corpus "$data/scifact" --depth 3 --out runs/qe/scifact_d3_spread ;;
    inits)     # the other starts on the same 1,000-step schedule: "first" to the end, "spread" and "leap" stopped at
               # step 250, where all four runs are compared on dev ("spread" as it was then: layers 0,2,5)
      fit --corpus "$data/scifact" --depth 3 --init first --out runs/qe/scifact_d3_first
      fit --corpus "$data/scifact" --depth 3 --init spread --layers 0,2,5 --stop-at-step 250 --out runs/qe/scifact_d3_spread_250
      fit --corpus "$data/scifact" --depth 3 --init leap --stop-at-step 250 --out runs/qe/scifact_d3_leap_250 ;;
    nfcorpus)
      fit --corpus "$data/nfcorpus" --depth 3 --out runs/qe/nfcorpus_d3_spread ;;
    d2)        # depth 2, the same recipe (layers 1 and 6 of the index model), and its dev and test rows
      fit --corpus "$data/scifact" --depth 2 --out runs/qe/scifact_d2_spread
      fit --corpus "$data/nfcorpus" --depth 2 --out runs/qe/nfcorpus_d2_spread
      python -m benchmarks.query.corpus --phases eval --only "trained d2" \
        --encoder "scifact:trained d2=runs/qe/scifact_d2_spread" --encoder "nfcorpus:trained d2=runs/qe/nfcorpus_d2_spread" ;;
    eval)      # dev and test NDCG@10 per depth, STS-B, the int8 graphs; the comparison of the starts (the committed
               # inits.md was made when the default run started from layers 0,2,5: rebuilt, its first row is today's)
      python -m benchmarks.query.corpus --phases eval --tasks scifact \
        --only "first, 1000 steps" --only "spread, 250 steps" --only "leap, 250 steps" \
        --encoder "scifact:first, 1000 steps=runs/qe/scifact_d3_first" \
        --encoder "scifact:spread, 250 steps=runs/qe/scifact_d3_spread_250" \
        --encoder "scifact:leap, 250 steps=runs/qe/scifact_d3_leap_250"
      python -m benchmarks.query.corpus --phases eval,stsb,int8 --only "trained d3" --repeats 5 \
        --encoder "scifact:trained d3=runs/qe/scifact_d3_spread" --encoder "nfcorpus:trained d3=runs/qe/nfcorpus_d3_spread" \
        --int8 "scifact:trained d3=runs/qe/scifact_d3_spread" --int8 "nfcorpus:trained d3=runs/qe/nfcorpus_d3_spread"
      python -m benchmarks.query.inits runs/qe/scifact_d3_spread runs/qe/scifact_d3_first \
        runs/qe/scifact_d3_spread_250 runs/qe/scifact_d3_leap_250 ;;
    defaults)  # the default runs of both corpora side by side: dev curves and training minutes (defaults.md)
      python -m benchmarks.query.inits --out benchmarks/results/query/defaults runs/qe/scifact_d3_spread \
        runs/qe/nfcorpus_d3_spread ;;
    *) echo "unknown part $part (scifact, inits, nfcorpus, eval, d2, defaults)" >&2; exit 2 ;;
  esac
done
