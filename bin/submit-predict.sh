#!/usr/bin/env bash
# Runs batch prediction (python -m beam_pipelines.predict) on Google Cloud Dataflow GPU workers:
#
#   bin/submit-predict.sh --project my-proj --bucket my-bucket \
#     --model_dir gs://my-bucket/runs/bbc --input_files 'gs://my-bucket/docs/*.jsonl' \
#     --output_dir gs://my-bucket/predictions/bbc \
#     --sdk_container_image us-central1-docker.pkg.dev/my-proj/spanwise/spanwise-predict-worker:TAG \
#     [-- --eval_views chunks --batch_size 64 --bf16]
#
# Each worker VM gets --gpu_count GPUs of --gpu_type (default: one NVIDIA L4 on a g2-standard-4)
# through Dataflow's worker_accelerator service option, with the NVIDIA driver installed by
# Dataflow (install-nvidia-driver). --no_gpu runs on CPU workers (n1-standard-4) instead.
#
# The workers need PyTorch, which neither Beam's default SDK image nor setup.py's install_requires
# carry (the preprocessing workers never import it), so --sdk_container_image is required: the
# Dockerfile's predict-worker target (bin/register-image.sh --target predict-worker) is Beam's SDK
# image plus a CUDA build of requirements.txt's torch and our packages; it serves CPU workers too.
# Everything after `--` goes to the pipeline unchanged (its own flags, see
# python -m beam_pipelines.predict --help, or more Beam options such as --num_workers,
# --no_use_public_ips, --labels k=v).
#
# The command runs from the repository root with ${PYTHON:-.venv/bin/python} (bin/setup-env.sh
# makes .venv), authenticated as Application Default Credentials (gcloud auth application-default
# login). It reads the model's config and plans the inputs here (so a missing column fails before
# any VM starts), submits the job and waits for it, then prints the summary; with --no_wait it
# returns once the job is submitted. --dry-run prints the exact command, one flag per line,
# shell-quoted, and runs nothing. Without --dry-run, the credentials are checked first (one line
# says what is missing), unless Beam's --no_auth is among the flags.
set -euo pipefail
cd "$(dirname "$0")/.."
PROG=submit-predict
# shellcheck source=bin/_common.sh
source bin/_common.sh

usage() {
  cat <<'EOF'
Usage: bin/submit-predict.sh --project PROJECT (--bucket BUCKET | --temp_location GS_URI)
         --model_dir GS_URI --input_files GS_URI_OR_PATTERN [...] --output_dir GS_URI
         --sdk_container_image URI [options] [-- PIPELINE_FLAGS...]

Where:
  --project PROJECT            Google Cloud project (default: $GOOGLE_CLOUD_PROJECT)
  --region REGION              Dataflow region (default: us-central1); it must have the GPU type
                               in one of its zones, and the project GPU quota there
Data:
  --model_dir GS_URI           a model folder saved by trainer.task, copied to gs:// (the workers
                               cannot read a path on this machine)
  --input_files GS_URI ...     the documents: one or more gs:// files or glob patterns (quote the
                               patterns), TSV, CSV, JSON Lines or Parquet, plain or compressed
  --output_dir GS_URI          folder for predictions-*.jsonl (or .parquet), rejected/ and
                               summary.json
Workers:
  --sdk_container_image URI    the workers' SDK container, with PyTorch in it (required):
                               bin/register-image.sh --project PROJECT --target predict-worker
  --gpu_type TYPE              GPU per worker (default: nvidia-l4); e.g. nvidia-tesla-t4,
                               nvidia-tesla-a100, nvidia-h100-80gb
  --gpu_count N                GPUs per worker: 1, 2, 4 or 8 (default: 1)
  --mps                        NVIDIA Multi-Process Service: the worker's Python processes share
                               the GPU concurrently (one GPU per worker only)
  --no_gpu                     CPU workers: no accelerator (machine type default n1-standard-4)
  --machine_type TYPE          worker machine type (default: g2-standard-4 for nvidia-l4,
                               n1-standard-4 for the N1 GPUs (T4, P4, V100, P100) and --no_gpu;
                               required for other GPU types)
  --worker_threads N           threads per worker process (default: 1; see below)
  --disk_size_gb N             worker boot disk (default: 50; the image with CUDA torch is large)
  --max_workers N              autoscaling limit (default: 4; GPU quota = N x --gpu_count)
Dataflow:
  --bucket BUCKET              where the temp and staging locations default to:
                               gs://BUCKET/dataflow/tmp and gs://BUCKET/dataflow/staging
  --temp_location GS_URI       Beam's temp location (default: from --bucket)
  --staging_location GS_URI    where the job's files are staged (default: from --bucket, else
                               beside --temp_location)
  --job_name NAME              default: spanwise-predict-<UTC date>-<time>
  --service_account EMAIL      the workers' service account
  --network NAME               VPC network for the workers
  --subnetwork NAME            subnetwork, e.g. regions/us-central1/subnetworks/NAME or its URL
  --no_wait                    return once the job is submitted (prints its id) instead of
                               waiting for it to finish
  --dry-run                    print the exact command, run nothing
  -h, --help                   this text

On GPU workers the pipeline runs with --device cuda, so a worker whose GPU torch cannot use fails
the job instead of predicting slowly on its CPU; with --no_gpu, --device cpu. Dataflow starts one
Python process per vCPU, each with its own copy of the model; --worker_threads 1 lets each process
run one bundle at a time, which bounds the GPU memory to (processes x (model + one batch)) and
costs little: a process's tokenization and forward passes share one interpreter lock anyway.
A model too large for one copy per process: pass --large_model after -- (one copy per VM).

Flags may be spelled with - or _ (--gpu-type, --dry_run) and as --flag=value. Everything after --
is passed to the pipeline as is (e.g. --eval_views chunks --batch_size 64 --bf16 --output_format
parquet --overwrite, or more Beam options such as --num_workers 2).
Environment: PYTHON (default .venv/bin/python), GOOGLE_CLOUD_PROJECT.
EOF
}

project=${GOOGLE_CLOUD_PROJECT:-} region="us-central1" model_dir="" output_dir="" input_files=()
bucket="" temp_location="" staging_location="" machine_type="" max_workers=4 disk_size_gb=50
gpu_type="nvidia-l4" gpu_count=1 no_gpu=0 mps=0 worker_threads=1
job_name="" sdk_container_image="" service_account="" network="" subnetwork="" dry_run=0 no_wait=0
pipeline_flags=()
while (($#)); do
  if [[ "$1" == --*=* ]]; then # --flag=value -> --flag value
    set -- "${1%%=*}" "${1#*=}" "${@:2}"
  fi
  flag=${1//_/-}
  case "$flag" in
    --project) need_value "$@"; project=$2; shift 2 ;;
    --region) need_value "$@"; region=$2; shift 2 ;;
    --model-dir) need_value "$@"; model_dir=$2; shift 2 ;;
    --input-files) # one or more values, up to the next flag
      need_value "$@"
      shift
      while (($#)) && [[ "$1" != -* ]]; do
        input_files+=("$1")
        shift
      done ;;
    --output-dir) need_value "$@"; output_dir=$2; shift 2 ;;
    --bucket) need_value "$@"; bucket=$2; shift 2 ;;
    --temp-location) need_value "$@"; temp_location=$2; shift 2 ;;
    --staging-location) need_value "$@"; staging_location=$2; shift 2 ;;
    --machine-type | --worker-machine-type) need_value "$@"; machine_type=$2; shift 2 ;;
    --gpu-type) need_value "$@"; gpu_type=$2; shift 2 ;;
    --gpu-count) need_value "$@"; gpu_count=$2; shift 2 ;;
    --no-gpu) no_gpu=1; shift ;;
    --mps) mps=1; shift ;;
    --worker-threads) need_value "$@"; worker_threads=$2; shift 2 ;;
    --disk-size-gb) need_value "$@"; disk_size_gb=$2; shift 2 ;;
    --max-workers | --max-num-workers) need_value "$@"; max_workers=$2; shift 2 ;;
    --job-name) need_value "$@"; job_name=$2; shift 2 ;;
    --sdk-container-image) need_value "$@"; sdk_container_image=$2; shift 2 ;;
    --service-account | --service-account-email) need_value "$@"; service_account=$2; shift 2 ;;
    --network) need_value "$@"; network=$2; shift 2 ;;
    --subnetwork) need_value "$@"; subnetwork=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --no-wait) no_wait=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; pipeline_flags=("$@"); break ;;
    *) die "unknown argument: $1 (pipeline flags go after --; see --help)" ;;
  esac
done

# --- checks: fail here, not after the (GPU) workers have started -----------------------------
[[ -n "$project" ]] || die "--project is required (the Google Cloud project to run the job in), or set GOOGLE_CLOUD_PROJECT; see --help"
[[ "$project" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] || die "invalid project id: $project"
[[ "$region" =~ ^[a-z]+(-[a-z]+)+[0-9]+$ ]] || die "invalid region: $region (e.g. us-central1)"
[[ -n "$model_dir" ]] || die "--model_dir is required: a model folder saved by trainer.task, in gs://; see --help"
if [[ "$model_dir" != gs://* ]]; then
  die "--model_dir must be a gs:// URI (the Dataflow workers read it), got $model_dir: copy the model folder to gs:// (gcloud storage cp -r DIR gs://BUCKET/PATH)"
fi
check_gs_uri --model_dir "$model_dir"
((${#input_files[@]})) || die "--input_files is required: one or more gs:// files or patterns; see --help"
for file in "${input_files[@]}"; do
  [[ "$file" == gs://* ]] || die "--input_files must be gs:// URIs (the Dataflow workers read them), got $file"
  check_gs_uri --input_files "$file"
done
[[ -n "$output_dir" ]] || die "--output_dir is required; see --help"
[[ "$output_dir" == gs://* ]] || die "--output_dir must be a gs:// URI (the Dataflow workers write it), got $output_dir"
check_gs_uri --output_dir "$output_dir"
resolve_dataflow_locations

# The container: the workers import torch (the model handler), which Beam's default image lacks.
if [[ -z "$sdk_container_image" ]]; then
  die "--sdk_container_image is required: the prediction workers need PyTorch$( ((no_gpu)) || echo " with CUDA"), which Beam's default image and setup.py's install_requires (--setup_file) lack; build and push one with bin/register-image.sh --project $project --target predict-worker, then pass the URI it prints"
fi
[[ "$sdk_container_image" =~ ^[a-z0-9][-a-zA-Z0-9_./:@]*[a-zA-Z0-9]$ ]] || die "invalid --sdk_container_image: $sdk_container_image"

# GPUs: type, count, and a machine type of the family that type attaches to.
if ((no_gpu)); then
  ((!mps)) || die "--mps shares a GPU: not with --no_gpu"
  machine_type=${machine_type:-n1-standard-4}
else
  [[ "$gpu_type" =~ ^nvidia-[a-z0-9]+(-[a-z0-9]+)*$ ]] || die "invalid --gpu_type: $gpu_type (e.g. nvidia-l4, nvidia-tesla-t4, nvidia-tesla-a100)"
  [[ "$gpu_count" =~ ^(1|2|4|8)$ ]] || die "--gpu_count must be 1, 2, 4 or 8, got $gpu_count"
  ((!mps || gpu_count == 1)) || die "--mps works only with one GPU per worker (--gpu_count 1), got --gpu_count $gpu_count"
  case "$gpu_type" in
    nvidia-l4) family=g2 ;;
    nvidia-tesla-t4 | nvidia-tesla-p4 | nvidia-tesla-v100 | nvidia-tesla-p100) family=n1 ;;
    nvidia-tesla-a100 | nvidia-a100-80gb) family=a2 ;;
    nvidia-h100-80gb | nvidia-h100-mega-80gb | nvidia-h200-141gb) family=a3 ;;
    *) family="" ;;
  esac
  if [[ -z "$machine_type" ]]; then
    case "$family" in
      g2) machine_type=g2-standard-4 ;;
      n1) machine_type=n1-standard-4 ;;
      *) die "--gpu_type $gpu_type: pass --machine_type too (a machine type that $gpu_type attaches to, with $gpu_count GPU(s))" ;;
    esac
  elif [[ -n "$family" && "$machine_type" != "$family"-* ]]; then
    die "--gpu_type $gpu_type attaches only to ${family^^} machine types ($family-...), not $machine_type"
  fi
fi
[[ "$machine_type" =~ ^[a-z0-9]+(-[a-z0-9]+)+$ ]] || die "invalid machine type: $machine_type (e.g. g2-standard-4, n1-standard-8)"
[[ "$max_workers" =~ ^[1-9][0-9]*$ ]] || die "--max_workers must be a positive integer, got $max_workers"
[[ "$worker_threads" =~ ^[1-9][0-9]*$ ]] || die "--worker_threads must be a positive integer, got $worker_threads"
[[ "$disk_size_gb" =~ ^[1-9][0-9]*$ ]] && ((disk_size_gb >= 30)) || die "--disk_size_gb must be an integer >= 30 (the worker image with CUDA torch is large), got $disk_size_gb"
job_name=${job_name:-spanwise-predict-$(date -u +%Y%m%d-%H%M%S)}
[[ "$job_name" =~ ^[a-z]([-a-z0-9]{0,1022}[a-z0-9])?$ ]] || die "invalid --job_name $job_name: Dataflow job names are lowercase letters, digits and -, starting with a letter"
if [[ -n "$service_account" ]]; then
  [[ "$service_account" =~ ^[^@[:space:]]+@[^@[:space:]]+$ ]] || die "--service_account takes an email, got $service_account"
fi
for name in network subnetwork; do
  [[ ! "${!name}" =~ [[:space:]] ]] || die "invalid --$name: ${!name}"
done

# Flags this script sets itself must not come again after -- (Beam and argparse would silently
# take the last one).
for f in ${pipeline_flags[@]+"${pipeline_flags[@]}"}; do
  [[ "$f" != -h && "$f" != --help ]] || die "--help among the pipeline flags: see python -m beam_pipelines.predict --help"
  [[ "$f" != --dry-run && "$f" != --dry_run ]] || die "$f after --, where it would go to the pipeline and the job would be submitted: put it before --"
  [[ "$f" == --* ]] || continue
  name=${f#--}
  name=${name%%=*}
  case "${name//-/_}" in
    device) die "$f after --: the script sets --device (cuda on GPU workers, cpu with --no_gpu)" ;;
    runner | project | region | model_dir | input_files | output_dir | temp_location | staging_location | job_name | \
      setup_file | requirements_file | sdk_container_image | worker_harness_container_image | machine_type | \
      worker_machine_type | max_num_workers | service_account_email | network | subnetwork | \
      dataflow_service_option | dataflow_service_options | worker_accelerator | number_of_worker_harness_threads | \
      disk_size_gb)
      die "$f after --: use this script's own flag instead (see --help)" ;;
  esac
done

python=${PYTHON:-.venv/bin/python}

# --- the command -----------------------------------------------------------------------------
cmd=("$python" -m beam_pipelines.predict
  --runner DataflowRunner
  --project "$project"
  --region "$region"
  --job_name "$job_name"
  --model_dir "$model_dir"
  --input_files "${input_files[@]}"
  --output_dir "$output_dir"
  --temp_location "$temp_location"
  --staging_location "$staging_location"
  --sdk_container_image "$sdk_container_image"
  --worker_machine_type "$machine_type"
  --max_num_workers "$max_workers"
  --disk_size_gb "$disk_size_gb"
  # One bundle at a time per SDK process (Dataflow runs one process per vCPU, each with its own
  # model): GPU memory stays at processes x (model + one batch) however many bundles are ready,
  # and nothing is lost, since a process's tokenization and forward passes hold one GIL anyway.
  --number_of_worker_harness_threads "$worker_threads")
if ((no_gpu)); then
  cmd+=(--device cpu)
else
  # Dataflow's GPU workers: the accelerator, and the NVIDIA driver installed on the VM (the CUDA
  # runtime is in the container, with torch). GPUs need Runner v2, Beam's default.
  accelerator="worker_accelerator=type:$gpu_type;count:$gpu_count;install-nvidia-driver"
  ((!mps)) || accelerator+=";use_nvidia_mps"
  cmd+=(--dataflow_service_options "$accelerator" --device cuda)
fi
[[ -z "$service_account" ]] || cmd+=(--service_account_email "$service_account")
[[ -z "$network" ]] || cmd+=(--network "$network")
[[ -z "$subnetwork" ]] || cmd+=(--subnetwork "$subnetwork")
((!no_wait)) || cmd+=(--no_wait_until_finish)
cmd+=(${pipeline_flags[@]+"${pipeline_flags[@]}"})

run_module_cmd "$dry_run" "$python" "${cmd[@]}"
