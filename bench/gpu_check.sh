#!/usr/bin/env bash
# The GPU check of issues 13 and 21, as one command on a GPU machine (about 6 minutes on one H200):
# our trainer against the Hugging Face Trainer, bf16, max_seq_length 512, a BERT-base-size model
# (random init), for the variants fused AdamW, --group_by_length and --torch_compile, and ours alone
# with batches by token budget (--max_tokens_per_batch, grouped by length) and packed views
# (--pack_views); prints the GPU's name, samples/s of both sides and our padding fraction. Needs python3 with torch (CUDA), transformers,
# accelerate, pyarrow, tokenizers, fsspec, pyyaml, tqdm, safetensors and tensorboard, and nothing
# from the network: the tokenizer, model and shards are made on the spot (bench/gpu_check.py).
#
#   bench/gpu_check.sh [--json FILE] [--variants ...] [--steps N]    # on the GPU machine
#   bench/gpu_check.sh --smoke                                       # the same, tiny, on this CPU
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'USAGE'
Usage: bench/gpu_check.sh [--smoke] [--json FILE] [--variants V1,V2] [--steps N] [--warmup_steps N]
                          [--batch_size N] [--workers N] [--work_dir DIR]

  --smoke      a tiny model for a few steps on the CPU: checks the script, measures nothing
  -h, --help   this text (the options: python3 bench/gpu_check.py --help)
Environment: PYTHON (default python3). The whole check is stopped after 570 s.
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
exec timeout 570 "$py" bench/gpu_check.py "$@"
