#!/usr/bin/env bash
# A 12-layer index (all-mpnet-base-v2) and its query encoders: benchmarks/results/query/{mpnet_index,mpnet_corpus}.md.
# One torch job at a time, one part after another. all-mpnet-base-v2's pass over a corpus takes about an hour on
# 2 cores: it saves its progress every two minutes into the st_leap cache and a rerun resumes it. Each training
# run is a step budget that resumes from its checkpoints: after a stop, rerun the cut-off command with --resume.
# Models go under runs/qe_mpnet/ (git-ignored).
#
#   bash benchmarks/query/mpnet_runs.sh PART...   (parts: index-scifact student-scifact student-lr-scifact
#       student-d6-scifact compare-scifact spread-scifact eval-scifact
#       int8-scifact index-nfcorpus student-nfcorpus student-d6-nfcorpus compare-nfcorpus eval-nfcorpus
#       int8-nfcorpus index-results student-d6-queries-scifact student-d6-queries-nfcorpus
#       student-queries-scifact student-queries-nfcorpus query-dev-scifact query-dev-nfcorpus eval-queries-scifact
#       eval-queries-nfcorpus int8-queries-scifact int8-queries-nfcorpus student-d6-long-scifact
#       student-d6-long-nfcorpus eval-long-scifact eval-long-nfcorpus int8-long-scifact int8-long-nfcorpus
#       student-d6-longer-scifact eval-longer-scifact int8-longer-scifact int8-served-scifact int8-served-nfcorpus)
#   *-queries-*: the same students with past queries beside the documents' texts (fit-query-encoder --queries): half
#   of the collection's non-test queries as a stand-in log (benchmarks/query/query_dev.py --write-log); query-dev:
#   the students on the other half (benchmarks/results/query/mpnet_query_dev_<task>.md), never the test split.
#   int8-served-*: each corpus's longest-trained student (SciFact 3,000 steps, NFCorpus 1,500) timed
#   again with the graphs also on the path `st-leap serve` runs them (rows "..., served path").
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$(dirname "$0")/../.."
data=../shared/data/beir
fit() { python -m st_leap fit-query-encoder mpnet "$@"; }
steps=500
corpus_eval() {  # dev and test NDCG@10 per depth against mpnet's index, STS-B, the int8 graph and its speed
  local task=$1; shift
  python -m benchmarks.query.corpus --original mpnet --tasks "$task" --repeats 5 \
    --save-dir runs/query/mpnet_corpus --out benchmarks/results/query/mpnet_corpus "$@"
}
for part in "$@"; do
  case "$part" in
    index-scifact|index-nfcorpus)  # mpnet's document pass into the shared cache, and its own full-depth NDCG@10
      python -m benchmarks.query.mpnet_index --tasks "${part#index-}" --out "runs/qe_mpnet/mpnet_index_${part#index-}" ;;
    index-results)  # both passes cached: the committed table (query passes only)
      python -m benchmarks.query.mpnet_index --tasks scifact,nfcorpus ;;
    student-scifact|student-nfcorpus)  # ours: 3 of all-MiniLM-L6-v2's layers trained into mpnet's space
      fit --corpus "$data/${part#student-}" --student minilm --depth 3 --max-steps $steps --eval-steps 100 \
        --out "runs/qe_mpnet/${part#student-}_student_d3" ;;
    student-lr-scifact)  # the same student at a higher peak learning rate (its layers have more to move)
      fit --corpus "$data/scifact" --student minilm --depth 3 --max-steps $steps --eval-steps 100 --learning-rate 5e-4 \
        --out runs/qe_mpnet/scifact_student_d3_lr5e-4 ;;
    student-d6-scifact|student-d6-nfcorpus)  # the whole all-MiniLM-L6-v2 as the student
      fit --corpus "$data/${part#student-d6-}" --student minilm --depth 6 --max-steps $steps --eval-steps 100 \
        --out "runs/qe_mpnet/${part#student-d6-}_student_d6" ;;
    student-d6-long-scifact|student-d6-long-nfcorpus)  # the whole MiniLM student three times longer, on the same
      # 32,000 texts (--train-texts: they repeat; mpnet's cached pass over them serves again, no new pass)
      fit --corpus "$data/${part#student-d6-long-}" --student minilm --depth 6 --max-steps $((3 * steps)) \
        --train-texts $((steps * 64)) --eval-steps 250 --out "runs/qe_mpnet/${part#student-d6-long-}_student_d6_long" ;;
    student-d6-longer-scifact)  # twice the long run again (its dev curve still rose at step 1,500): 3,000 steps on
      # the same 32,000 texts, within the 90 minutes of training a corpus may take
      fit --corpus "$data/scifact" --student minilm --depth 6 --max-steps $((6 * steps)) --train-texts $((steps * 64)) \
        --eval-steps 250 --out runs/qe_mpnet/scifact_student_d6_longer ;;
    student-d6-queries-scifact|student-d6-queries-nfcorpus|student-queries-scifact|student-queries-nfcorpus)
      task=${part##*-}; depth=3; [ "${part#student-d6}" != "$part" ] && depth=6
      python -m benchmarks.query.query_dev --task "$task" --write-log "runs/querylog/$task.txt"
      fit --corpus "$data/$task" --student minilm --depth $depth --max-steps $steps --eval-steps 100 \
        --queries "runs/querylog/$task.txt" --query-fraction 0.25 --out "runs/qe_mpnet/${task}_student_d${depth}_queries" ;;
    query-dev-scifact|query-dev-nfcorpus)
      task=${part#query-dev-}
      python -m benchmarks.query.query_dev --task "$task" --original mpnet \
        --out "benchmarks/results/query/mpnet_query_dev_$task" \
        $(for d in runs/qe_mpnet/${task}_student_*/; do [ -f "$d/query_encoder.json" ] && echo "${d%/}"; done) ;;
    compare-scifact|compare-nfcorpus)  # the runs of a corpus on its dev split
      task=${part#compare-}
      python -m benchmarks.query.inits --out "benchmarks/results/query/mpnet_students_$task" \
        $(for d in runs/qe_mpnet/${task}_*/; do [ -f "$d/query_encoder.json" ] && echo "${d%/}"; done) ;;
    spread-scifact)  # mpnet's own layers (1, 6, 12), the same schedule stopped at step 250 (dev compared there)
      fit --corpus "$data/scifact" --depth 3 --max-steps $steps --stop-at-step 250 --eval-steps 50 \
        --out runs/qe_mpnet/scifact_spread_d3_250 ;;
    eval-scifact|eval-nfcorpus|int8-scifact|int8-nfcorpus|eval-queries-scifact|eval-queries-nfcorpus|int8-queries-scifact|int8-queries-nfcorpus|eval-long-scifact|eval-long-nfcorpus|int8-long-scifact|int8-long-nfcorpus|eval-longer-scifact|int8-longer-scifact)
      # eval: dev and test NDCG@10 per depth, STS-B; int8: the query side as one int8 graph, its NDCG@10 and its
      # speed against mpnet torch fp32 and mpnet's whole-graph int8 in the same rounds. Every trained student and
      # spread encoder of the task (*-queries-*: the students trained with past queries only; *-long-*: the longer run;
      # *-longer-*: the 3,000-step one).
      task=${part##*-}
      dirs=(runs/qe_mpnet/${task}_student_d3 runs/qe_mpnet/${task}_student_d6 runs/qe_mpnet/${task}_spread_d3_250)
      [ "${part#*-queries-}" != "$part" ] && dirs=(runs/qe_mpnet/${task}_student_d3_queries runs/qe_mpnet/${task}_student_d6_queries)
      [ "${part#*-long-}" != "$part" ] && dirs=(runs/qe_mpnet/${task}_student_d6_long)
      [ "${part#*-longer-}" != "$part" ] && dirs=(runs/qe_mpnet/${task}_student_d6_longer)
      specs=()
      for d in "${dirs[@]}"; do
        [ -f "$d/query_encoder.json" ] || continue
        name=$(basename "$d"); name=${name#${task}_}; name=${name//_/ }
        if [ "${part%%-*}" = eval ]; then specs+=(--only "$name" --encoder "$task:$name=$d"); else specs+=(--int8 "$task:$name=$d"); fi
      done
      if [ "${part%%-*}" = eval ]; then corpus_eval "$task" --phases eval,stsb "${specs[@]}"
      else corpus_eval "$task" --phases int8 "${specs[@]}"; fi ;;
    int8-served-scifact) corpus_eval scifact --phases int8 --int8 "scifact:student d6 longer served=runs/qe_mpnet/scifact_student_d6_longer" ;;
    int8-served-nfcorpus) corpus_eval nfcorpus --phases int8 --int8 "nfcorpus:student d6 long served=runs/qe_mpnet/nfcorpus_student_d6_long" ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
