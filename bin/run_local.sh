#!/usr/bin/env bash
# Runs the training image's entry point, `python -m trainer.task`, on this machine without
# Docker: bin/setup-env.sh (the pinned .venv), then the trainer with the flags given. With
# --aip_dir it sets the AIP_* variables as Vertex AI does for a job's baseOutputDirectory, and
# with --nproc N > 1 it runs N processes under torchrun, as the Vertex AI launcher does on a
# multi-GPU machine (bin/submit-vertex.sh).
#
#   bin/run_local.sh --aip_dir out/aip -- --data_dir out/demo/prep --model_name MODEL --task_name t
#   bin/run_local.sh -- --help        # the trainer's flags
set -euo pipefail
cd "$(dirname "$0")/.."
PROG=run_local
# shellcheck source=bin/_common.sh
source bin/_common.sh

usage() {
  cat <<'EOF'
Usage: bin/run_local.sh [options] [--] TRAINER_FLAGS...

  --aip_dir DIR     mimic Vertex AI's baseOutputDirectory: AIP_MODEL_DIR=DIR/model/,
                    AIP_CHECKPOINT_DIR=DIR/checkpoints/, AIP_TENSORBOARD_LOG_DIR=DIR/logs/
                    (the trainer's defaults for --output_dir, --checkpoint_dir and its logs)
  --nproc N         N processes on this machine under torchrun (default 1: plain python)
  --no-setup        skip bin/setup-env.sh (the .venv must exist)
  --dry-run         print the environment and the command, run nothing
  -h, --help        this text (the trainer's flags: bin/run_local.sh -- --help)

Options come first; the first argument that is not one of them, or the one after --, starts
the trainer's flags. Options may be spelled with - or _ and as --option=value.
EOF
}

aip_dir="" nproc=1 setup=1 dry_run=0
while (($#)); do
  if [[ "$1" == --*=* ]]; then
    flag=${1%%=*}
    case "${flag//_/-}" in
      --aip-dir | --nproc) set -- "$flag" "${1#*=}" "${@:2}" ;;
    esac
  fi
  case "${1//_/-}" in
    --aip-dir) (($# >= 2)) && [[ -n "$2" && "$2" != --* ]] || die "$1 needs a value"; aip_dir=$2; shift 2 ;;
    --nproc) (($# >= 2)) && [[ "$2" != --* ]] || die "$1 needs a value"; nproc=$2; shift 2 ;;
    --no-setup) setup=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[[ "$nproc" =~ ^[1-9][0-9]*$ ]] || die "--nproc must be a positive integer, got $nproc"

env_vars=(PYTHONUNBUFFERED=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false)
if [[ -n "$aip_dir" ]]; then
  aip_dir=${aip_dir%/}
  env_vars+=("AIP_MODEL_DIR=$aip_dir/model/" "AIP_CHECKPOINT_DIR=$aip_dir/checkpoints/"
    "AIP_TENSORBOARD_LOG_DIR=$aip_dir/logs/")
fi

py=${SPANWISE_VENV:-.venv}/bin/python
if ((nproc > 1)); then
  cmd=("$py" -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node="$nproc" -m trainer.task "$@")
else
  cmd=("$py" -m trainer.task "$@")
fi

if ((dry_run)); then
  ((!setup)) || echo "bin/setup-env.sh"
  quote_cmd env "${env_vars[@]}" "${cmd[@]}"
  echo
  exit 0
fi
if ((setup)); then
  bin/setup-env.sh
fi
[[ -x "$py" ]] || die "$py not found: run bin/setup-env.sh (or drop --no-setup)"
exec env "${env_vars[@]}" "${cmd[@]}"
