#!/usr/bin/env bash
# The GPU check of issues 13 and 21, as one command on a GPU machine, under 10 minutes in all:
# (1) training: our trainer against the Hugging Face Trainer, bf16, max_seq_length 512, a
# BERT-base-size model (random init), for the variants fused AdamW, --group_by_length and
# --torch_compile, and ours alone with batches by token budget (--max_tokens_per_batch, grouped by
# length) and packed views (--pack_views), with our padding fraction (bench/gpu_check.py, 60 steps
# a run, stopped after 340 s); (2) prediction: transformers.pipeline against trainer.predict and
# the Python API at 512 tokens, bf16 weights, with and without host workers and a token budget
# (bench/gpu_predict.py, about 2.5 minutes, stopped after 240 s). Prints the GPU's name and one
# table per part. Needs python3 with torch (CUDA), transformers, accelerate, pyarrow, tokenizers,
# fsspec, pyyaml, tqdm, safetensors and tensorboard, and nothing from the network: the tokenizer,
# models, shards and documents are made on the spot.
#
#   bench/gpu_check.sh [--json FILE] [--variants ...] [--steps N]    # on the GPU machine
#   bench/gpu_check.sh --smoke                                       # the same, tiny, on this CPU
#   bench/gpu_check.sh --only_predict | --skip_predict [...]         # one part
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'USAGE'
Usage: bench/gpu_check.sh [--smoke] [--json FILE] [--variants V1,V2] [--steps N] [--warmup_steps N]
                          [--batch_size N] [--workers N] [--work_dir DIR] [--only_predict | --skip_predict]

  --smoke         a tiny model for a few steps on the CPU: checks the script, measures nothing
  --only_predict  the prediction part alone; --skip_predict: the training part alone
  -h, --help      this text (the options: python3 bench/gpu_check.py --help, bench/gpu_predict.py --help)
Environment: PYTHON (default python3). The training part is stopped after 340 s, the prediction
part after 240 s; the prediction part gets --smoke, --work_dir and --json (with .predict before
the extension) of the arguments, the training part all others.
USAGE
}
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
esac

py=${PYTHON:-python3}
if ! "$py" -c "import torch, transformers, accelerate, pyarrow, tokenizers, fsspec, yaml, tqdm, safetensors, tensorboard"; then
  echo "gpu_check: $py lacks a package above (carry it as a wheel: see the device notes)" >&2
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi -L || true
export PYTHONUNBUFFERED=1
train=1 predict=1 train_args=() predict_args=()
while (($#)); do
  case "$1" in
    --only_predict) train=0 ;;
    --skip_predict) predict=0 ;;
    --smoke) train_args+=("$1"); predict_args+=("$1") ;;
    --work_dir) train_args+=("$1" "$2"); predict_args+=("$1" "$2"); shift ;;
    --json) train_args+=("$1" "$2"); predict_args+=("$1" "${2%.*}.predict.${2##*.}"); shift ;;
    *) train_args+=("$1") ;;
  esac
  shift
done
status=0
if ((train)); then
  timeout 340 "$py" bench/gpu_check.py ${train_args[@]+"${train_args[@]}"} || status=$?
fi
if ((predict)); then
  timeout 240 "$py" bench/gpu_predict.py ${predict_args[@]+"${predict_args[@]}"} || status=$?
fi
exit "$status"
