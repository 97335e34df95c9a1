#!/usr/bin/env bash
# Runs the preprocessing pipeline (python -m beam_pipelines.preprocess) on Google Cloud Dataflow:
#
#   bin/submit-dataflow.sh --project my-proj --bucket my-bucket \
#     --data_dir gs://my-bucket/corpus --output_dir gs://my-bucket/prep/corpus \
#     --tokenizer bert-base-uncased [-- --seq_len_func ht --seq_func_params 128 382 --max_seq_length 512]
#
# The project reaches the workers as an sdist of ./setup.py (--setup_file ./setup.py; the workers
# pip-install it and its install_requires at start-up), or ready-made in a custom SDK container
# image (--sdk_container_image; then no --setup_file). Everything after `--` goes to the pipeline
# unchanged (its own flags, see python -m beam_pipelines.preprocess --help, or more Beam options
# such as --num_workers, --no_use_public_ips, --labels k=v, --experiments ...).
#
# The command runs from the repository root with ${PYTHON:-.venv/bin/python} (bin/setup-env.sh
# makes .venv), authenticated as Application Default Credentials (gcloud auth application-default
# login). It submits the job and waits for it, then prints the corpus statistics; with --no_wait it
# returns once the job is submitted, printing its id and console URL. --dry-run prints the exact
# command, one flag per line, shell-quoted, and runs nothing. Without --dry-run, the credentials
# are checked first (one line says what is missing), unless Beam's --no_auth is among the flags.
set -euo pipefail
cd "$(dirname "$0")/.."
PROG=submit-dataflow
# shellcheck source=bin/_common.sh
source bin/_common.sh

usage() {
  cat <<'EOF'
Usage: bin/submit-dataflow.sh --project PROJECT (--bucket BUCKET | --temp_location GS_URI)
         --data_dir GS_URI --output_dir GS_URI --tokenizer NAME_OR_GS_URI [options] [-- PIPELINE_FLAGS...]

Where:
  --project PROJECT            Google Cloud project (default: $GOOGLE_CLOUD_PROJECT)
  --region REGION              Dataflow region (default: us-central1)
Data:
  --data_dir GS_URI            folder with train.tsv, dev.tsv and optional test.tsv
  --output_dir GS_URI          folder for manifest.json, the Parquet shards and rejected/
  --tokenizer NAME_OR_GS_URI   a Hugging Face hub name or a gs:// folder (the workers cannot
                               read a path on this machine)
Dataflow:
  --bucket BUCKET              where the temp and staging locations default to:
                               gs://BUCKET/dataflow/tmp and gs://BUCKET/dataflow/staging
  --temp_location GS_URI       Beam's temp location (default: from --bucket)
  --staging_location GS_URI    where the job's files are staged (default: from --bucket, else
                               beside --temp_location)
  --machine_type TYPE          worker machine type (default: n1-standard-4)
  --max_workers N              autoscaling limit (default: 10)
  --job_name NAME              default: spanwise-preprocess-<UTC date>-<time>
  --sdk_container_image URI    run the workers in this custom SDK container (our packages
                               installed in it); default: Beam's image plus --setup_file ./setup.py
  --service_account EMAIL      the workers' service account
  --network NAME               VPC network for the workers
  --subnetwork NAME            subnetwork, e.g. regions/us-central1/subnetworks/NAME or its URL
  --no_wait                    return once the job is submitted (prints its id and console
                               URL) instead of waiting for it to finish
  --dry-run                    print the exact command, run nothing
  -h, --help                   this text

Flags may be spelled with - or _ (--machine-type, --dry_run) and as --flag=value. Everything
after -- is passed to the pipeline as is (e.g. --seq_len_func ht --seq_func_params 128 382
--max_seq_length 512 --overwrite, or more Beam options such as --num_workers 2).
Environment: PYTHON (default .venv/bin/python), GOOGLE_CLOUD_PROJECT.
EOF
}

project=${GOOGLE_CLOUD_PROJECT:-} region="us-central1" data_dir="" output_dir="" tokenizer=""
bucket="" temp_location="" staging_location="" machine_type="n1-standard-4" max_workers=10
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
    --data-dir) need_value "$@"; data_dir=$2; shift 2 ;;
    --output-dir) need_value "$@"; output_dir=$2; shift 2 ;;
    --tokenizer) need_value "$@"; tokenizer=$2; shift 2 ;;
    --bucket) need_value "$@"; bucket=$2; shift 2 ;;
    --temp-location) need_value "$@"; temp_location=$2; shift 2 ;;
    --staging-location) need_value "$@"; staging_location=$2; shift 2 ;;
    --machine-type | --worker-machine-type) need_value "$@"; machine_type=$2; shift 2 ;;
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

# --- checks: fail here, not after the workers have started ---------------------------------
[[ -n "$project" ]] || die "--project is required (the Google Cloud project to run the job in), or set GOOGLE_CLOUD_PROJECT; see --help"
[[ "$project" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] || die "invalid project id: $project"
[[ "$region" =~ ^[a-z]+(-[a-z]+)+[0-9]+$ ]] || die "invalid region: $region (e.g. us-central1)"
for name in data_dir output_dir; do
  value=${!name}
  [[ -n "$value" ]] || die "--$name is required; see --help"
  [[ "$value" == gs://* ]] || die "--$name must be a gs:// URI (the Dataflow workers read and write it), got $value"
  check_gs_uri "--$name" "$value"
done
[[ -n "$tokenizer" ]] || die "--tokenizer is required: a Hugging Face hub name or a gs:// folder"
if [[ "$tokenizer" != gs://* ]]; then
  if [[ "$tokenizer" == /* || "$tokenizer" == .* || "$tokenizer" == "~"* || -e "$tokenizer" ]]; then
    die "--tokenizer $tokenizer is a local path, which the Dataflow workers cannot read: copy it to gs:// (gcloud storage cp -r) or use a hub name"
  fi
  [[ "$tokenizer" =~ ^[A-Za-z0-9][-A-Za-z0-9_.]*(/[A-Za-z0-9][-A-Za-z0-9_.]*)?$ ]] || die "--tokenizer must be a hub name (e.g. bert-base-uncased, org/name) or a gs:// folder, got $tokenizer"
else
  check_gs_uri --tokenizer "$tokenizer"
fi
resolve_dataflow_locations
[[ "$machine_type" =~ ^[a-z0-9]+(-[a-z0-9]+)+$ ]] || die "invalid machine type: $machine_type (e.g. n1-standard-4, n2-highmem-8)"
[[ "$max_workers" =~ ^[1-9][0-9]*$ ]] || die "--max_workers must be a positive integer, got $max_workers"
job_name=${job_name:-spanwise-preprocess-$(date -u +%Y%m%d-%H%M%S)}
[[ "$job_name" =~ ^[a-z]([-a-z0-9]{0,1022}[a-z0-9])?$ ]] || die "invalid --job_name $job_name: Dataflow job names are lowercase letters, digits and -, starting with a letter"
if [[ -n "$sdk_container_image" ]]; then
  [[ "$sdk_container_image" =~ ^[a-z0-9][-a-zA-Z0-9_./:@]*[a-zA-Z0-9]$ ]] || die "invalid --sdk_container_image: $sdk_container_image"
fi
if [[ -n "$service_account" ]]; then
  [[ "$service_account" =~ ^[^@[:space:]]+@[^@[:space:]]+$ ]] || die "--service_account takes an email, got $service_account"
fi
for name in network subnetwork; do
  [[ ! "${!name}" =~ [[:space:]] ]] || die "invalid --$name: ${!name}"
done

# Flags this script sets itself must not come again after -- (Beam would silently take the last).
for f in ${pipeline_flags[@]+"${pipeline_flags[@]}"}; do
  [[ "$f" != -h && "$f" != --help ]] || die "--help among the pipeline flags: see python -m beam_pipelines.preprocess --help"
  [[ "$f" != --dry-run && "$f" != --dry_run ]] || die "$f after --, where it would go to the pipeline and the job would be submitted: put it before --"
  [[ "$f" == --* ]] || continue
  name=${f#--}
  name=${name%%=*}
  case "${name//-/_}" in
    runner | project | region | data_dir | output_dir | tokenizer | temp_location | staging_location | job_name | \
      setup_file | sdk_container_image | worker_harness_container_image | machine_type | worker_machine_type | \
      max_num_workers | service_account_email | network | subnetwork)
      die "$f after --: use this script's own flag instead (see --help)" ;;
  esac
done

python=${PYTHON:-.venv/bin/python}

# --- the command -----------------------------------------------------------------------------
cmd=("$python" -m beam_pipelines.preprocess
  --runner DataflowRunner
  --project "$project"
  --region "$region"
  --job_name "$job_name"
  --data_dir "$data_dir"
  --output_dir "$output_dir"
  --tokenizer "$tokenizer"
  --temp_location "$temp_location"
  --staging_location "$staging_location"
  --worker_machine_type "$machine_type"
  --max_num_workers "$max_workers")
if [[ -n "$sdk_container_image" ]]; then
  cmd+=(--sdk_container_image "$sdk_container_image")
else
  cmd+=(--setup_file ./setup.py)
fi
[[ -z "$service_account" ]] || cmd+=(--service_account_email "$service_account")
[[ -z "$network" ]] || cmd+=(--network "$network")
[[ -z "$subnetwork" ]] || cmd+=(--subnetwork "$subnetwork")
((!no_wait)) || cmd+=(--no_wait_until_finish)
cmd+=(${pipeline_flags[@]+"${pipeline_flags[@]}"})

run_module_cmd "$dry_run" "$python" "${cmd[@]}"
