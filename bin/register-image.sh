#!/usr/bin/env bash
# Builds an image of the Dockerfile (--target trainer, the default, dataflow-worker or
# predict-worker) and pushes it to Artifact Registry as
#   REGION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE:TAG
# creating the Docker repository first if it does not exist. Prints the image URI last, on
# stdout, so that IMAGE_URI=$(bin/register-image.sh --project P | tail -n1) works.
# Needs docker and gcloud (authenticated: gcloud auth login), checked first. --dry-run prints the
# exact commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."
PROG=register-image
# shellcheck source=bin/_common.sh
source bin/_common.sh

usage() {
  cat <<'EOF'
Usage: bin/register-image.sh --project PROJECT [options]

  --project PROJECT        Google Cloud project (required)
  --region REGION          Artifact Registry location (default: us-central1)
  --repository NAME        Docker repository in Artifact Registry (default: spanwise)
  --target STAGE           trainer (Vertex AI training, the default), dataflow-worker (the
                           custom SDK container for bin/submit-dataflow.sh --sdk_container_image)
                           or predict-worker (that container plus CUDA PyTorch, for
                           bin/submit-predict.sh --sdk_container_image)
  --image NAME             image name (default: spanwise-STAGE, e.g. spanwise-trainer)
  --tag TAG                image tag (default: the git commit, short, plus -dirty when the
                           work tree has uncommitted changes)
  --base_image IMAGE       build on another base image: for trainer a CUDA PyTorch image (the
                           Dockerfile's TORCH_IMAGE; its torch must be requirements.txt's), for
                           dataflow-worker and predict-worker a Beam SDK image (BEAM_SDK_IMAGE;
                           its Beam must be requirements.txt's)
  --dry-run                print the commands, run nothing
  -h, --help               this text

Flags may be spelled with - or _ (--base-image, --dry_run) and as --flag=value.
EOF
}

dry_run=0
run() {
  if ((dry_run)); then
    quote_cmd "$@"
    echo
  else
    echo "+ $(quote_cmd "$@")" >&2
    "$@"
  fi
}

project="" region="us-central1" repository="spanwise" target="trainer" image="" tag="" base_image=""
while (($#)); do
  if [[ "$1" == --*=* ]]; then # --flag=value -> --flag value
    set -- "${1%%=*}" "${1#*=}" "${@:2}"
  fi
  flag=${1//_/-}
  case "$flag" in
    --project) need_value "$@"; project=$2; shift 2 ;;
    --region) need_value "$@"; region=$2; shift 2 ;;
    --repository) need_value "$@"; repository=$2; shift 2 ;;
    --target) need_value "$@"; target=$2; shift 2 ;;
    --image) need_value "$@"; image=$2; shift 2 ;;
    --tag) need_value "$@"; tag=$2; shift 2 ;;
    --base-image) need_value "$@"; base_image=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

[[ -n "$project" ]] || die "--project is required (the Google Cloud project to push to); see --help"
[[ "$project" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] || die "invalid project id: $project"
[[ "$region" =~ ^[a-z]+(-[a-z]+)+[0-9]+$ ]] || die "invalid region: $region (e.g. us-central1)"
[[ "$repository" =~ ^[a-z]([a-z0-9-]*[a-z0-9])?$ ]] || die "invalid repository name: $repository"
case "$target" in
  trainer) base_arg=TORCH_IMAGE ;;
  dataflow-worker | predict-worker) base_arg=BEAM_SDK_IMAGE ;;
  *) die "--target is trainer, dataflow-worker or predict-worker, got $target" ;;
esac
image=${image:-spanwise-$target}
[[ "$image" =~ ^[a-z0-9]+([._/-][a-z0-9]+)*$ ]] || die "invalid image name: $image"
if [[ -z "$tag" ]]; then
  tag=$(git rev-parse --short=12 HEAD 2>/dev/null) || die "not a git checkout: pass --tag"
  if [[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    tag+="-dirty"
  fi
fi
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "invalid image tag: $tag"
[[ "$tag" != latest ]] || die "refusing the tag 'latest': jobs must name an immutable image"

host="${region}-docker.pkg.dev"
uri="${host}/${project}/${repository}/${image}:${tag}"

# the tools and credentials, before anything is run (a dry run needs none of them)
if ((!dry_run)); then
  command -v docker >/dev/null || die "docker not found: install Docker (https://docs.docker.com/engine/install/) (or use --dry-run)"
  require_gcloud
fi

if ((dry_run)); then
  echo "# dry run: nothing is executed; the commands would be:"
fi

# 1. The Docker repository, created once per project and region.
describe=(gcloud artifacts repositories describe "$repository" --project="$project" --location="$region")
create=(gcloud artifacts repositories create "$repository" --project="$project" --location="$region"
  --repository-format=docker --description="spanwise images (training, Dataflow workers)")
if ((dry_run)); then
  echo "$(quote_cmd "${describe[@]}") >/dev/null 2>&1 || $(quote_cmd "${create[@]}")"
elif ! "${describe[@]}" >/dev/null 2>&1; then
  run "${create[@]}"
fi

# 2. Let docker push there with the gcloud credentials.
run gcloud auth configure-docker "$host" --quiet

# 3. Build (amd64: what Vertex AI runs, also when built on an ARM laptop) and push.
build=(docker build --platform=linux/amd64 --target="$target" --tag="$uri")
[[ -z "$base_image" ]] || build+=(--build-arg="$base_arg=$base_image")
run "${build[@]}" .
run docker push "$uri"

echo "$uri"
