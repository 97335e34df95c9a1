#!/usr/bin/env bash
# The whole-document study of issue 19 at 512-token windows on one GPU, with pretrained weights.
#
# Two steps, because the GPU machine has neither Beam, the bundled corpora nor the bundled model:
#
#   bench/gpu_study.sh --prepare DIR          # here (CPU): data and model into DIR (< 64 MiB, to carry)
#   bench/gpu_study.sh --run DIR OUT          # on the GPU machine: the grid; OUT/cells.tar.gz, report.tar.gz, gpu.txt
#   bench/gpu_study.sh --aggregate DIR OUT    # here again: the tables into docs/results.md from OUT's cells
#
# --prepare: BBC (all 1,701 train, 212 dev) and 20 Newsgroups (a stratified 2,000 train / 500 dev,
# to stay under the carry limit and the time), each original and inverted (bench/study.py
# --variant), preprocessed with the MiniLM tokenizer; the bundled all-MiniLM-L6-v2 saved as fp16
# safetensors (about 45 MB) with its tokenizer.
# --run: the MiniLM weights back to fp32 (training needs fp32 master weights), then one
# bench/study.py per corpus and variant, all four at once on the one GPU (a 6-layer model leaves
# it mostly idle), bf16, max_seq_length 512, funcs $FUNCS, seeds $SEEDS, epochs $EPOCHS. The whole
# run stops after $LIMIT_S seconds (default 540: one device call is at most 600 s); every cell that
# finished by then is in OUT/cells.tar.gz, and --aggregate tables what is there.
# Environment: PYTHON (default python3), FUNCS, SEEDS, EPOCHS, CORPORA, VARIANTS, MAX_SEQ, LIMIT_S, RESULTS_MD;
# STUDY_CPU=1 runs --run on the CPU (to check the script, not to measure). On the lent machine use
# its own torch and transformers (as bench/gpu_check.sh does); carry DIR (e.g. .gpu_study, ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

py=${PYTHON:-python3}
FUNCS=${FUNCS:-head chunks-transformer chunks-attention chunks-mean chunks-max ht tail rs}  # the decisive rows first
SEEDS=${SEEDS:-13 14 15}
EPOCHS=${EPOCHS:-2}
CORPORA=${CORPORA:-bbc 20newsgroups}
VARIANTS=${VARIANTS:-original inverted}
MAX_SEQ=${MAX_SEQ:-512}
LIMIT_S=${LIMIT_S:-540}

limits() {  # the study's subset flags per corpus
  case "$1" in
    bbc) echo "" ;;
    20newsgroups) echo "--train_limit 2000 --dev_limit 500" ;;
  esac
}

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }

case "${1:-}" in
  --prepare)
    dir=$(realpath -m "${2:?--prepare DIR}")
    mkdir -p "$dir"
    for corpus in $CORPORA; do
      for variant in $VARIANTS; do
        # shellcheck disable=SC2046
        prep=$("$py" bench/study.py --corpus "$corpus" --variant "$variant" --work_dir "$dir/work" $(limits "$corpus") \
          --prepare_only | tail -1)
        rm -rf "$dir/$corpus-$variant"
        cp -r "$prep" "$dir/$corpus-$variant"
      done
    done
    rm -rf "$dir/work"
    "$py" - "$dir/minilm" <<'PY'
import sys
import torch
from transformers import AutoModel, AutoTokenizer
sys.path.insert(0, "bench")
import _common
source, target = _common.minilm_dir(), sys.argv[1]
AutoModel.from_pretrained(source, dtype=torch.float16).save_pretrained(target, safe_serialization=True)
AutoTokenizer.from_pretrained(source).save_pretrained(target)
PY
    du -sh "$dir"
    ;;
  --run)
    dir=$(realpath "${2:?--run DIR OUT}")
    out=$(realpath -m "${3:?--run DIR OUT}")
    mkdir -p "$out"
    command -v nvidia-smi >/dev/null && nvidia-smi -L | tee "$out/gpu.txt" || echo "no GPU" > "$out/gpu.txt"
    gpu_name=$(head -1 "$out/gpu.txt" | sed 's/ (UUID.*//; s/^GPU 0: //')
    work=${WORK:-/tmp/spanwise-gpu-study}
    rm -rf "$work/minilm" "$work/report" && mkdir -p "$work/report"
    "$py" - "$dir/minilm" "$work/minilm" <<'PY'
import sys
import torch
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained(sys.argv[1], dtype=torch.float32)
assert next(model.parameters()).dtype == torch.float32
model.save_pretrained(sys.argv[2], safe_serialization=True)
AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])
PY
    device=(--gpu --gpu_name "$gpu_name")
    [ "${STUDY_CPU:-0}" = 1 ] && device=()  # the CPU check of this script (tests, --smoke)
    pids=()
    for corpus in $CORPORA; do
      for variant in $VARIANTS; do
        # shellcheck disable=SC2086
        timeout "$LIMIT_S" "$py" bench/study.py --corpus "$corpus-$variant" --prep_dir "$dir/$corpus-$variant" \
          --model "$work/minilm" --work_dir "$work/runs" --max_seq_length "$MAX_SEQ" --epochs "$EPOCHS" \
          --seeds $SEEDS --funcs $FUNCS --eval_views 1 4 --bf16 "${device[@]}" \
          --results_md "$work/report/results-$corpus-$variant.md" > "$work/report/$corpus-$variant.log" 2>&1 &
        pids+=($!)
      done
    done
    status=0
    for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
    # two files come back from a device call's $OUT (at most 8): the finished cells, and the logs and tables
    (cd "$work/runs" && find . -name cell.json -print0 | tar -czf "$out/cells.tar.gz" --null -T -)
    tar -czf "$out/report.tar.gz" -C "$work" report
    echo "cells: $(tar -tzf "$out/cells.tar.gz" | wc -l); last exit $status"
    tail -n 3 "$work"/report/*.log
    ;;
  --aggregate)
    dir=$(realpath "${2:?--aggregate DIR OUT}")
    out=$(realpath "${3:?--aggregate DIR OUT}")
    work=${WORK:-/tmp/spanwise-gpu-study}
    mkdir -p "$work/runs"
    tar -xzf "$out/cells.tar.gz" -C "$work/runs"
    gpu_name=$(head -1 "$out/gpu.txt" | sed 's/ (UUID.*//; s/^GPU 0: //')
    for corpus in $CORPORA; do
      for variant in $VARIANTS; do
        # shellcheck disable=SC2086
        "$py" bench/study.py --corpus "$corpus-$variant" --prep_dir "$dir/$corpus-$variant" --model "$dir/minilm" \
          --work_dir "$work/runs" --max_seq_length "$MAX_SEQ" --epochs "$EPOCHS" --seeds $SEEDS --funcs $FUNCS \
          --eval_views 1 4 --bf16 --gpu --gpu_name "$gpu_name" --section gpu --aggregate_only \
          --results_md "${RESULTS_MD:-docs/results.md}" || true
      done
    done
    ;;
  -h | --help | "") usage ;;
  *) echo "gpu_study: unknown option $1 (--prepare, --run, --aggregate)" >&2; exit 2 ;;
esac
