#!/usr/bin/env bash
# Submits `python -m trainer.task` as a Vertex AI custom job running the training image (see
# bin/register-image.sh) and streams its logs. Everything after `--` goes to the trainer as the
# container's args, e.g.
#
#   bin/submit-vertex.sh --project my-proj --accelerator_type NVIDIA_L4 --accelerator_count 2 \
#     --base_output_dir gs://my-bucket/runs/bbc-1 -- \
#     --data_dir gs://my-bucket/prep/bbc --model_name bert-base-uncased --task_name bbc --bf16
#
# The job spec (a CustomJobSpec) is written to a YAML file and passed to
# `gcloud ai custom-jobs create --config`. --dry-run prints the spec and the exact gcloud commands
# and runs nothing.
#
# Cluster shapes:
# - one machine, at most one GPU: the image's entry point, `python -m trainer.task FLAGS`;
# - several GPUs and/or several machines: the container command is `python -m trainer.vertex_launch N`,
#   which runs torchrun (as `python -m torch.distributed.run`, the module behind the torchrun
#   script) with one process per GPU. For several machines, replica 0 is the only replica of
#   worker pool 0 and the others are the identical replicas of worker pool 1; every machine reads
#   its node rank, the node count and the master's address from CLUSTER_SPEC, which Vertex AI
#   sets in every replica (the same parsing as trainer/distributed.py), falling back to
#   MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK (one entry per machine) where CLUSTER_SPEC is absent.
#
# With --base_output_dir gs://B/D, Vertex AI sets AIP_MODEL_DIR=gs://B/D/model/,
# AIP_CHECKPOINT_DIR=gs://B/D/checkpoints/ and AIP_TENSORBOARD_LOG_DIR=gs://B/D/logs/ in the
# container, which are the trainer's defaults for --output_dir, --checkpoint_dir and the
# TensorBoard directory; a restarted (e.g. preempted --spot) job resumes from the checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
PROG=submit-vertex
# shellcheck source=bin/_common.sh
source bin/_common.sh

usage() {
  cat <<'EOF'
Usage: bin/submit-vertex.sh --project PROJECT [options] -- TRAINER_FLAGS...

Where:
  --project PROJECT          Google Cloud project (required)
  --region REGION            Vertex AI region (default: us-central1)
Image (default: what bin/register-image.sh pushes for this commit):
  --image_uri URI            the training image, e.g. us-central1-docker.pkg.dev/P/spanwise/spanwise-trainer:TAG
  --repository NAME          otherwise built from these, as bin/register-image.sh does
  --image NAME                 (defaults: spanwise, spanwise-trainer, the git commit)
  --tag TAG
Machines:
  --machine_type TYPE        default: n1-standard-8
  --accelerator_type TYPE    GPU, e.g. NVIDIA_TESLA_T4, NVIDIA_L4, NVIDIA_TESLA_A100, NVIDIA_H100_80GB
  --accelerator_count N      GPUs per machine (default: 1 with --accelerator_type, else 0)
  --replica_count N          machines (default 1); N > 1 adds a pool of N-1 identical workers
  --spot                     run on Spot VMs (scheduling strategy SPOT): cheaper, may be preempted
Job:
  --display_name NAME        default: spanwise-<UTC date and time>
  --base_output_dir GS_URI   gs:// prefix for the model, checkpoints and logs (sets AIP_*_DIR)
  --service_account EMAIL    the job's run-as service account
  --tensorboard NAME         Vertex AI TensorBoard: projects/P/locations/R/tensorboards/ID
                             (needs --service_account and --base_output_dir)
  --env KEY=VALUE            environment variable in the container (repeatable)
  --spec_file PATH           where to write the job spec (default: a temporary file)
  --stream-logs              follow the job's logs after submitting it (default)
  --no-stream-logs           submit and return
  --dry-run                  print the job spec and the gcloud commands, run nothing
  -h, --help                 this text

Flags may be spelled with - or _ (--machine-type, --dry_run) and as --flag=value. The trainer
flags after -- are checked here with the trainer's own checks (python -m trainer.preflight:
the flags, and the --seq_func_params budget of --max_seq_length) before anything is submitted,
also by --dry-run. Without --dry-run, gcloud and an active account are checked first.
Environment: PYTHON (the Python for the flag check; default .venv/bin/python, else python3).
EOF
}

# A YAML double-quoted scalar (JSON string escapes are valid YAML escapes).
yaml_str() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/\\t}
  s=${s//$'\r'/\\r}
  printf '"%s"' "$s"
}

# Multi-GPU / multi-node jobs run trainer.vertex_launch (one torchrun per machine) as the container
# command: its first argument is the number of processes per machine, the job's args are the trainer's flags.

project="" region="us-central1" image_uri="" repository="spanwise" image="spanwise-trainer" tag=""
display_name="" machine_type="n1-standard-8" accelerator_type="" accelerator_count=""
replica_count=1 spot=0 service_account="" base_output_dir="" tensorboard="" spec_file=""
stream_logs=1 dry_run=0
envs=()
trainer_flags=()
while (($#)); do
  if [[ "$1" == --*=* ]]; then # --flag=value -> --flag value
    set -- "${1%%=*}" "${1#*=}" "${@:2}"
  fi
  flag=${1//_/-}
  case "$flag" in
    --project) need_value "$@"; project=$2; shift 2 ;;
    --region) need_value "$@"; region=$2; shift 2 ;;
    --image-uri) need_value "$@"; image_uri=$2; shift 2 ;;
    --repository) need_value "$@"; repository=$2; shift 2 ;;
    --image) need_value "$@"; image=$2; shift 2 ;;
    --tag) need_value "$@"; tag=$2; shift 2 ;;
    --display-name) need_value "$@"; display_name=$2; shift 2 ;;
    --machine-type) need_value "$@"; machine_type=$2; shift 2 ;;
    --accelerator-type) need_value "$@"; accelerator_type=$2; shift 2 ;;
    --accelerator-count) need_value "$@"; accelerator_count=$2; shift 2 ;;
    --replica-count) need_value "$@"; replica_count=$2; shift 2 ;;
    --spot) spot=1; shift ;;
    --service-account) need_value "$@"; service_account=$2; shift 2 ;;
    --base-output-dir) need_value "$@"; base_output_dir=$2; shift 2 ;;
    --tensorboard) need_value "$@"; tensorboard=$2; shift 2 ;;
    --env) need_value "$@"; envs+=("$2"); shift 2 ;;
    --spec-file) need_value "$@"; spec_file=$2; shift 2 ;;
    --stream-logs) stream_logs=1; shift ;;
    --no-stream-logs) stream_logs=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; trainer_flags=("$@"); break ;;
    *) die "unknown argument: $1 (trainer flags go after --; see --help)" ;;
  esac
done

# --- checks: fail here, not after a paid machine has started -------------------------------
[[ -n "$project" ]] || die "--project is required (the Google Cloud project to run the job in); see --help"
[[ "$project" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] || die "invalid project id: $project"
[[ "$region" =~ ^[a-z]+(-[a-z]+)+[0-9]+$ ]] || die "invalid region: $region (e.g. us-central1)"
[[ "$machine_type" =~ ^[a-z0-9]+(-[a-z0-9]+)+$ ]] || die "invalid machine type: $machine_type (e.g. n1-standard-8, g2-standard-24, a3-highgpu-8g)"
[[ "$replica_count" =~ ^[1-9][0-9]*$ ]] || die "--replica_count must be a positive integer, got $replica_count"
if [[ -n "$accelerator_count" ]]; then
  [[ "$accelerator_count" =~ ^(0|[1-9][0-9]*)$ ]] || die "--accelerator_count must be an integer >= 0, got $accelerator_count"
fi
if [[ -n "$accelerator_type" ]]; then
  [[ "$accelerator_type" =~ ^NVIDIA_[A-Z0-9_]+$ ]] || die "--accelerator_type must be an NVIDIA GPU (the image is CUDA), e.g. NVIDIA_L4; got $accelerator_type"
  accelerator_count=${accelerator_count:-1}
  ((accelerator_count > 0)) || die "--accelerator_type $accelerator_type needs --accelerator_count >= 1"
else
  accelerator_count=${accelerator_count:-0}
  ((accelerator_count == 0)) || die "--accelerator_count $accelerator_count needs --accelerator_type"
fi
if [[ -n "$base_output_dir" ]]; then
  check_gs_uri --base_output_dir "$base_output_dir"
  base_output_dir=${base_output_dir%/}
fi
if [[ -n "$tensorboard" ]]; then
  [[ "$tensorboard" =~ ^projects/[^/]+/locations/[^/]+/tensorboards/[^/]+$ ]] || die "--tensorboard must be projects/P/locations/R/tensorboards/ID, got $tensorboard"
  [[ -n "$service_account" ]] || die "--tensorboard needs --service_account (Vertex AI uploads the logs as that account)"
  [[ -n "$base_output_dir" ]] || die "--tensorboard needs --base_output_dir (the logs are uploaded from AIP_TENSORBOARD_LOG_DIR)"
fi
for kv in ${envs[@]+"${envs[@]}"}; do
  [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env takes KEY=VALUE, got $kv"
  [[ ! "${kv%%=*}" =~ ^(AIP_|CLUSTER_SPEC$|TF_CONFIG$) ]] || die "--env ${kv%%=*}: Vertex AI sets it"
done

# Values go into YAML double-quoted strings, which escape newlines and tabs but no other control
# character.
for value in "$display_name" "$service_account" "$image_uri" ${envs[@]+"${envs[@]}"} ${trainer_flags[@]+"${trainer_flags[@]}"}; do
  value=${value//[$'\n\t\r']/}
  [[ ! "$value" =~ [[:cntrl:]] ]] || die "a control character in an argument: $(shell_quote "$value")"
done

((${#trainer_flags[@]})) || die "no trainer flags: put them after --, e.g. -- --data_dir gs://B/prep --model_name NAME --task_name T"
for f in "${trainer_flags[@]}"; do
  [[ "$f" != -h && "$f" != --help ]] || die "--help among the trainer flags: see python -m trainer.task --help"
done
has_output_dir=0
for f in "${trainer_flags[@]}"; do
  [[ "$f" != --output_dir && "$f" != --output_dir=* ]] || has_output_dir=1
done
((has_output_dir)) || [[ -n "$base_output_dir" ]] || die "say where the model goes: --base_output_dir gs://... (sets AIP_MODEL_DIR) or --output_dir gs://... among the trainer flags"

# gcloud and its credentials, before anything else is done (a dry run needs neither)
((dry_run)) || require_gcloud

# The trainer's own checks of its flags (trainer.preflight: the flag checks, and the sequence-length
# budget with the tokenizer where it is a local folder), where this checkout has a Python for them.
py=""
for candidate in "${PYTHON:-}" "${SPANWISE_VENV:-.venv}/bin/python" python3; do
  if [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null && "$candidate" -c "import trainer.preflight, transformers" 2>/dev/null; then
    py=$candidate
    break
  fi
done
if [[ -n "$py" ]]; then
  aip_model_dir=""
  [[ -z "$base_output_dir" ]] || aip_model_dir="$base_output_dir/model/"
  if ! check=$(AIP_MODEL_DIR="$aip_model_dir" AIP_CHECKPOINT_DIR="" AIP_TENSORBOARD_LOG_DIR="" HF_HUB_OFFLINE=1 \
    "$py" -m trainer.preflight "${trainer_flags[@]}" 2>&1); then
    die "the trainer flags would fail the job:"$'\n'"$check"
  fi
  [[ -z "$check" ]] || echo "$check" >&2
else
  echo "submit-vertex: note: no Python with this project here; the trainer flags were not checked" >&2
fi

# --- the job --------------------------------------------------------------------------------
if [[ -z "$image_uri" ]]; then
  if [[ -z "$tag" ]]; then
    tag=$(git rev-parse --short=12 HEAD 2>/dev/null) || die "not a git checkout: pass --image_uri or --tag"
    if [[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
      tag+="-dirty"
    fi
  fi
  [[ "$image" =~ ^[a-z0-9]+([._/-][a-z0-9]+)*$ ]] || die "invalid --image name: $image (a whole image URI goes to --image_uri)"
  [[ "$repository" =~ ^[a-z]([a-z0-9-]*[a-z0-9])?$ ]] || die "invalid --repository name: $repository"
  [[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "invalid --tag: $tag"
  image_uri="${region}-docker.pkg.dev/${project}/${repository}/${image}:${tag}"
fi
[[ "$image_uri" != *:latest ]] || die "refusing an image tagged latest: name an immutable tag"
display_name=${display_name:-spanwise-$(date -u +%Y%m%d-%H%M%S)}

use_torchrun=0
if ((accelerator_count > 1 || replica_count > 1)); then
  use_torchrun=1
fi
nproc_per_node=$((accelerator_count > 1 ? accelerator_count : 1))

# The worker pools: pool 0 is the primary replica; with --replica_count N > 1, pool 1 holds N-1
# workers with the same machine and container (YAML aliases of pool 0's).
worker_pools() {
  local line arg kv machine_anchor="" container_anchor=""
  if ((replica_count > 1)); then
    machine_anchor=" &machine" container_anchor=" &container"
  fi
  echo "- machineSpec:$machine_anchor"
  echo "    machineType: $(yaml_str "$machine_type")"
  if [[ -n "$accelerator_type" ]]; then
    echo "    acceleratorType: $(yaml_str "$accelerator_type")"
    echo "    acceleratorCount: $accelerator_count"
  fi
  echo "  replicaCount: 1"
  echo "  containerSpec:$container_anchor"
  echo "    imageUri: $(yaml_str "$image_uri")"
  if ((use_torchrun)); then
    echo "    command:"
    echo "    - \"python\""
    echo "    - \"-m\""
    echo "    - \"trainer.vertex_launch\""
    echo "    - $(yaml_str "$nproc_per_node")"
  fi
  echo "    args:"
  for arg in "${trainer_flags[@]}"; do
    echo "    - $(yaml_str "$arg")"
  done
  if ((${#envs[@]})); then
    echo "    env:"
    for kv in "${envs[@]}"; do
      echo "    - name: $(yaml_str "${kv%%=*}")"
      echo "      value: $(yaml_str "${kv#*=}")"
    done
  fi
  if ((replica_count > 1)); then
    echo "- machineSpec: *machine"
    echo "  replicaCount: $((replica_count - 1))"
    echo "  containerSpec: *container"
  fi
}

job_spec() {
  echo "# Vertex AI CustomJobSpec for gcloud ai custom-jobs create --config (bin/submit-vertex.sh)"
  echo "workerPoolSpecs:"
  worker_pools
  if ((spot)); then
    echo "scheduling:"
    echo "  strategy: SPOT"
  fi
  if [[ -n "$base_output_dir" ]]; then
    echo "baseOutputDirectory:"
    echo "  outputUriPrefix: $(yaml_str "$base_output_dir/")"
  fi
  [[ -z "$service_account" ]] || echo "serviceAccount: $(yaml_str "$service_account")"
  [[ -z "$tensorboard" ]] || echo "tensorboard: $(yaml_str "$tensorboard")"
}

if [[ -n "$spec_file" ]]; then
  mkdir -p "$(dirname "$spec_file")"
else
  spec_dir=$(mktemp -d "${TMPDIR:-/tmp}/spanwise-job.XXXXXX")
  spec_file="$spec_dir/job.yaml"
  # a dry run leaves the spec for inspection (its path is in the printed command)
  ((dry_run)) || trap 'rm -rf "$spec_dir"' EXIT
fi
job_spec >"$spec_file"

create=(gcloud ai custom-jobs create --project="$project" --region="$region"
  --display-name="$display_name" --config="$spec_file" --format="value(name)")
stream=(gcloud ai custom-jobs stream-logs --project="$project" --region="$region")

if ((dry_run)); then
  echo "# dry run: nothing is executed."
  echo "# --- job spec ($spec_file) ---"
  cat "$spec_file"
  echo "# --- end of job spec ---"
  echo "JOB=\$($(quote_cmd "${create[@]}"))"
  if ((stream_logs)); then
    echo "$(quote_cmd "${stream[@]}") \"\$JOB\""
  fi
  exit 0
fi

echo "+ $(quote_cmd "${create[@]}")" >&2
job=$("${create[@]}")
[[ -n "$job" ]] || die "gcloud ai custom-jobs create printed no job name"
echo "submitted: $job"
if ((stream_logs)); then
  echo "streaming the logs (Ctrl-C stops following; the job goes on)" >&2
  echo "+ $(quote_cmd "${stream[@]}" "$job")" >&2
  "${stream[@]}" "$job"
fi
