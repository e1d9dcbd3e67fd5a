#!/usr/bin/env bash
# The training levers of fit-query-encoder on a MiniLM index, each on the corpus dev split (held-out documents;
# never test queries or qrels): benchmarks/results/query/levers_<task>.md. One torch job at a time. Each lever
# run is the default 1,000-step schedule stopped at step 500 (--stop-at-step), where all runs of a corpus are
# compared on dev (every 250 steps); a winner continues to the end with --resume. The index model's passes are
# cached, so only a corpus's first run pays them.
#
#   bash benchmarks/query/levers_runs.sh TASK PART...   (TASK: scifact or nfcorpus; parts: base ceiling retrieval
#       distill hardneg hardneg-doc soft hardneg-soft titles sentences spans lr2e-4 lr5e-5 depth2 layers035
#       layers135 layers045 steps2000 batch128 soup hardneg7 hardneg-depth2 hardneg-lr2e-4 finish-base
#       finish-hardneg finish-titles finish-layers035 finish-layers045 finish-layers135 layers035-queries
#       layers035-batch128 finish-layers035-batch128 queries queries-half query-dev compare test test-ceiling
#       finish-ceiling test-ceiling-full seeds soup-seeds)
#   finish-*: the run continues to the end of its schedule (--resume); test: the BEIR test queries of every finished
#   run, shown beside dev, never used to choose (benchmarks/results/query/levers_test_<task>.md); test-ceiling: the
#   same for the whole adapted model where it stopped (step 500 of 1,000); finish-ceiling runs it to step 1,000 and
#   test-ceiling-full scores it there.
#   queries: past queries as a user's log would give them (no labels): half of the collection's non-test queries,
#   written by benchmarks/query/query_dev.py --write-log; the run goes the whole schedule (its step-500 dev point is
#   in its curve). query-dev: every run scored on the other half of the non-test queries
#   (benchmarks/results/query/query_dev_<task>.md): a dev signal from real queries, never the test split.
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$(dirname "$0")/../.."
# The depth-3 start of every lever run below except the layers* ones: layers 0,2,5 of the index model, spread's pick
# when these runs were made (spread now sends the middle layer deeper, 0,3,5: the layers035 runs won on dev). The
# layers035-* parts are the levers that won on dev once, rerun from the new start to the end of the schedule.
d3="--layers 0,2,5"
task=$1; shift
data=../shared/data/beir/$task
out=runs/levers/$task
fit() { local name=$1; shift; python -m st_leap fit-query-encoder minilm --corpus "$data" --stop-at-step 500 --out "$out/$name" "$@"; }
finish() { local name=$1; shift; python -m st_leap fit-query-encoder minilm --corpus "$data" --resume --out "$out/$name" "$@"; }
full() { local name=$1; shift; python -m st_leap fit-query-encoder minilm --corpus "$data" --out "$out/$name" "$@"; }
finished() {  # the runs among the folders given that went to the end of their schedule
  local d
  for d in "$@"; do
    d=${d%/}
    python -c "import json, sys; r = json.load(open(sys.argv[1])); sys.exit(r['steps'] != r['config']['max_steps'])" \
      "$d/query_encoder.json" 2>/dev/null && echo "$d"
  done
  return 0
}
for part in "$@"; do
  case "$part" in
    base)        fit d3 $d3 ;;                                 # the default then
    ceiling)     fit d6 --depth 6 ;;                                 # the whole index model adapted: the ceiling
    finish-ceiling) finish d6 --depth 6 ;;                           # ... to the end of the default schedule
    retrieval)   fit d3_retrieval $d3 --distill-weight 0 ;;    # the retrieval term alone
    distill)     fit d3_distill $d3 --retrieval-weight 0 ;;    # the distillation term alone
    hardneg)     fit d3_hardneg3 $d3 --hard-negatives 3 ;;
    hardneg7)    fit d3_hardneg7 $d3 --hard-negatives 7 ;;
    hardneg-depth2) fit d2_hardneg3 --depth 2 --hard-negatives 3 ;;
    hardneg-lr2e-4) fit d3_hardneg3_lr2e-4 $d3 --hard-negatives 3 --learning-rate 2e-4 ;;
    hardneg-doc) fit d3_hardneg3_doc $d3 --hard-negatives 3 --negatives-from document ;;
    soft)        fit d3_soft1 $d3 --soft-weight 1 ;;
    hardneg-soft) fit d3_hardneg3_soft1 $d3 --hard-negatives 3 --soft-weight 1 ;;
    titles)      fit d3_titles_sentences $d3 --kinds title,sentence ;;
    sentences)   fit d3_sentences $d3 --kinds sentence ;;
    spans)       fit d3_spans $d3 --kinds span ;;
    lr2e-4)      fit d3_lr2e-4 $d3 --learning-rate 2e-4 ;;     # the peak learning rate, within the budget
    lr5e-5)      fit d3_lr5e-5 $d3 --learning-rate 5e-5 ;;
    depth2)      fit d2 --depth 2 ;;                                 # the shallower row beside depth 3
    layers035)   fit d3_layers035 --layers 0,3,5 ;;                  # another start: spread picks 0,2,5
    layers135)   fit d3_layers135 --layers 1,3,5 ;;
    layers045)   fit d3_layers045 --layers 0,4,5 ;;
    finish-layers035) finish d3_layers035 --layers 0,3,5 ;;
    finish-layers045) finish d3_layers045 --layers 0,4,5 ;;
    finish-layers135) finish d3_layers135 --layers 1,3,5 ;;
    steps2000)   full d3_2000 $d3 --max-steps 2000 ;;          # a longer schedule, still inside the hour
    batch128)    fit d3_batch128 $d3 --batch-size 128 ;;       # twice the in-batch negatives per step
    soup)        # the finished depth-3 runs (one start, one shape) averaged weight by weight, scored on dev and test
      python -m benchmarks.query.soup --out "$out/soup_d3" $(finished "$out"/d3 "$out"/d3_hardneg3 "$out"/d3_queries \
        "$out"/d3_queries_half "$out"/d3_titles_sentences)
      python -m benchmarks.query.corpus --tasks "$task" --phases eval --save-dir runs/query/levers \
        --out "benchmarks/results/query/levers_soup_$task" --only soup_d3 --encoder "$task:soup_d3=$out/soup_d3" ;;
    seeds)       # the default (layers 0,3,5, spread's pick) trained again with two other training seeds: same texts,
                 # same dev split, another batch order and dropout; how far runs move by chance, and members of a soup
      full d3_layers035_seed1 --layers 0,3,5 --train-seed 1
      full d3_layers035_seed2 --layers 0,3,5 --train-seed 2 ;;
    soup-seeds)  # the default and its two reseeded copies averaged (one start, one recipe), each scored beside it
      python -m benchmarks.query.soup --out "$out/soup_seeds" $(finished "$out"/d3_layers035 "$out"/d3_layers035_seed1 \
        "$out"/d3_layers035_seed2)
      python -m benchmarks.query.corpus --tasks "$task" --phases eval --save-dir runs/query/levers \
        --out "benchmarks/results/query/levers_soup_$task" --only soup_seeds --encoder "$task:soup_seeds=$out/soup_seeds" \
        --only d3_layers035_seed1 --encoder "$task:d3_layers035_seed1=$out/d3_layers035_seed1" \
        --only d3_layers035_seed2 --encoder "$task:d3_layers035_seed2=$out/d3_layers035_seed2" ;;
    queries)
      python -m benchmarks.query.query_dev --task "$task" --write-log "runs/querylog/$task.txt"
      full d3_queries $d3 --queries "runs/querylog/$task.txt" --query-fraction 0.25 ;;
    layers035-hardneg) full d3_layers035_hardneg3 --layers 0,3,5 --hard-negatives 3 ;;   # each lever that won a dev
    layers035-titles)  full d3_layers035_titles_sentences --layers 0,3,5 --kinds title,sentence ;;   # from the new start
    layers035-batch128)  # twice the in-batch negatives per step, on the default's texts (each seen twice): no new pass
      fit d3_layers035_batch128 --layers 0,3,5 --batch-size 128 --train-texts 64000 ;;
    finish-layers035-batch128) finish d3_layers035_batch128 --layers 0,3,5 --batch-size 128 --train-texts 64000 ;;
    layers035-queries)  # the start that won the corpus dev with the log that won the real-query dev (default share)
      full d3_layers035_queries --layers 0,3,5 --queries "runs/querylog/$task.txt" ;;
    queries-half)  # the same log filling half of the batches instead of a quarter (the default since)
      full d3_queries_half $d3 --queries "runs/querylog/$task.txt" --query-fraction 0.5 ;;
    query-dev)
      python -m benchmarks.query.query_dev --task "$task" \
        $(for d in "$out"/*/; do [ -f "$d/query_encoder.json" ] && echo "${d%/}"; done) ;;
    finish-base)    finish d3 $d3 ;;
    finish-hardneg) finish d3_hardneg3 $d3 --hard-negatives 3 ;;
    finish-titles)  finish d3_titles_sentences $d3 --kinds title,sentence ;;
    test)
      specs=()
      for d in $(finished "$out"/*/); do specs+=(--only "$(basename "$d")" --encoder "$task:$(basename "$d")=$d"); done
      python -m benchmarks.query.corpus --tasks "$task" --phases eval --save-dir runs/query/levers \
        --out "benchmarks/results/query/levers_test_$task" "${specs[@]}" ;;
    test-ceiling)
      python -m benchmarks.query.corpus --tasks "$task" --phases eval --save-dir runs/query/levers \
        --out "benchmarks/results/query/levers_test_$task" --only "d6 at step 500" --encoder "$task:d6 at step 500=$out/d6" ;;
    test-ceiling-full)  # the same, once finish-ceiling has run it to step 1,000
      python -m benchmarks.query.corpus --tasks "$task" --phases eval --save-dir runs/query/levers \
        --out "benchmarks/results/query/levers_test_$task" --only d6 --encoder "$task:d6=$out/d6" ;;
    compare)     python -m benchmarks.query.inits --out "benchmarks/results/query/levers_$task" \
                   $(for d in "$out"/*/; do [ -f "$d/query_encoder.json" ] && echo "${d%/}"; done) ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
