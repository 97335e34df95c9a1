# Three images from one file (docker build --target NAME; bin/register-image.sh --target NAME):
#
# * trainer (the last stage, so also what a plain `docker build .` makes): `python -m
#   trainer.task` on a CUDA PyTorch base, for Vertex AI custom jobs (bin/submit-vertex.sh) and any
#   Docker host with NVIDIA GPUs. bin/run_local.sh runs the same entry point without Docker.
# * dataflow-worker: a custom Beam SDK container for the preprocessing job on Dataflow
#   (bin/submit-dataflow.sh --sdk_container_image URI), our packages and their pinned
#   dependencies preinstalled, so workers start without pip-installing anything.
# * predict-worker: the same Beam SDK container plus PyTorch with CUDA, for batch prediction on
#   Dataflow GPU workers (bin/submit-predict.sh --sdk_container_image URI); it runs on CPU-only
#   workers too.
#
# TORCH_IMAGE is pinned by tag and must carry exactly the torch that requirements.txt pins
# (torch==2.13.0; the pytorch/pytorch tags read <torch>-cuda<X.Y>-cudnn<N>-runtime). The build
# checks this and fails on a mismatch. Change both together; tests/test_cloud_scripts.py checks
# that they agree. CUDA 12.x rather than 13.x asks less of the machines' GPU drivers. The tag
# could not be looked up from where this file was written: confirm that it exists
# (docker manifest inspect IMAGE) before the first build, or pass another with
# bin/register-image.sh --base_image.
ARG TORCH_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
# BEAM_SDK_IMAGE is Beam's own SDK image for the apache-beam that requirements.txt pins, for the
# Python the job is submitted with (3.11 here): Dataflow requires the same Beam version and
# Python minor version on the submitting machine and the workers. The tests check both.
ARG BEAM_SDK_IMAGE=apache/beam_python3.11_sdk:2.77.0
# TORCH_CUDA_INDEX is PyTorch's wheel index of one CUDA version, for the predict-worker stage
# (Beam's SDK image has no torch): the same CUDA 12.8 as TORCH_IMAGE (the tests check that they
# agree), and the torch version is requirements.txt's, read from it by the build and checked
# after. As with TORCH_IMAGE, confirm that the index serves that torch for the image's Python
# before the first build (pip download --no-deps torch==VERSION --index-url URL).
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128

# --------------------------------------------------------------------------- dataflow-worker
FROM ${BEAM_SDK_IMAGE} AS dataflow-worker

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TOKENIZERS_PARALLELISM=false

WORKDIR /opt/spanwise
# setup.py's install_requires are what the workers need (no torch), held to the same frozen
# versions as everywhere else by constraints.txt; the last line checks that the Beam the image
# came with is still the one requirements.txt pins.
COPY requirements.txt constraints.txt setup.py ./
COPY tokenization/ tokenization/
COPY schemas/ schemas/
COPY spanwise_io/ spanwise_io/
COPY corpora/ corpora/
COPY modeling/ modeling/
COPY beam_pipelines/ beam_pipelines/
COPY trainer/ trainer/
RUN set -eux; \
    pip install --no-build-isolation -c constraints.txt .; \
    rm -rf build ./*.egg-info; \
    python -I -c "import re, apache_beam, beam_pipelines.preprocess; want = re.search(r'^apache-beam\[gcp\]==(\S+)', open('requirements.txt').read(), re.M).group(1); assert apache_beam.__version__ == want, (apache_beam.__version__, want)"

# Beam's worker boot program is the entry point of an SDK container. It runs as root, as in
# Beam's own images: the Dataflow worker VM, not this container, is the isolation boundary.
ENTRYPOINT ["/opt/apache/beam/boot"]

# --------------------------------------------------------------------------- predict-worker
FROM ${BEAM_SDK_IMAGE} AS predict-worker
ARG TORCH_CUDA_INDEX

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TOKENIZERS_PARALLELISM=false

WORKDIR /opt/spanwise
# torch first, in its own layer (a few GB with its CUDA libraries; reused while only the code
# changes): exactly requirements.txt's version, a CUDA build from TORCH_CUDA_INDEX (PyPI's
# Linux wheel would do too, but the index pins the CUDA version). Its CUDA runtime comes as pip
# wheels (nvidia-*); the driver is the worker VM's (Dataflow's install-nvidia-driver option).
COPY requirements.txt constraints.txt ./
RUN set -eux; \
    want=$(sed -n 's/^torch==\([^[:space:]]*\)[[:space:]]*$/\1/p' requirements.txt); \
    test -n "$want"; \
    pip install --index-url "${TORCH_CUDA_INDEX}" "torch==${want}"; \
    python -c "import re, torch; want = re.search(r'^torch==(\S+)', open('requirements.txt').read(), re.M).group(1); have = torch.__version__.split('+')[0]; assert have == want, f'torch {have} installed, requirements.txt pins {want}'; assert torch.version.cuda, 'TORCH_CUDA_INDEX gave a CPU-only torch'"

# Our packages and setup.py's install_requires, held to constraints.txt; torch is pinned to the
# exact build installed above, so pip can neither replace it nor fetch the CPU wheel. The last
# line checks that the Beam the image came with is still requirements.txt's and that the CUDA
# torch is still there (-I: the installed package, not the sources in this directory).
COPY setup.py ./
COPY tokenization/ tokenization/
COPY schemas/ schemas/
COPY spanwise_io/ spanwise_io/
COPY corpora/ corpora/
COPY modeling/ modeling/
COPY beam_pipelines/ beam_pipelines/
COPY trainer/ trainer/
RUN set -eux; \
    python -c "import torch; print('torch==' + torch.__version__)" > /tmp/torch-from-image.txt; \
    pip install --no-build-isolation -c constraints.txt -c /tmp/torch-from-image.txt .; \
    rm -rf build ./*.egg-info /tmp/torch-from-image.txt; \
    python -I -c "import re, torch, apache_beam, beam_pipelines.predict; want = re.search(r'^apache-beam\[gcp\]==(\S+)', open('requirements.txt').read(), re.M).group(1); assert apache_beam.__version__ == want, (apache_beam.__version__, want); assert torch.version.cuda, 'pip replaced the CUDA torch'"

# Beam's worker boot program is the entry point of an SDK container (root, as in Beam's images).
ENTRYPOINT ["/opt/apache/beam/boot"]

# --------------------------------------------------------------------------- trainer
FROM ${TORCH_IMAGE} AS trainer

# hadolint ignore=DL3064
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TOKENIZERS_PARALLELISM=false

WORKDIR /opt/spanwise

# Dependencies first (their layer is reused while only the code changes), from the same pinned
# files as bin/setup-env.sh. The base image's CUDA torch already satisfies requirements.txt's
# torch==2.13.0 (a pin without a local label, such as +cu128, matches any build of 2.13.0), and a
# second constraint pins torch to the exact build found in the image, so pip can neither fetch
# the CPU wheel that constraints.txt was frozen with nor any other build. constraints.txt pins no
# CUDA-specific package (nvidia-*, triton), so it does not fight the image's CUDA libraries; the
# tests check that too. The last line fails the build if torch was replaced anyway.
COPY requirements.txt constraints.txt ./
RUN set -eux; \
    python -c "import re, torch; want = re.search(r'^torch==(\S+)', open('requirements.txt').read(), re.M).group(1); have = torch.__version__.split('+')[0]; assert have == want, f'TORCH_IMAGE has torch {have}, requirements.txt pins {want}'; assert torch.version.cuda, 'TORCH_IMAGE has a CPU-only torch'"; \
    python -c "import torch; print('torch==' + torch.__version__)" > /tmp/torch-from-image.txt; \
    pip install -r requirements.txt -c constraints.txt -c /tmp/torch-from-image.txt; \
    rm /tmp/torch-from-image.txt; \
    python -c "import torch, transformers, apache_beam, pyarrow, gcsfs, tensorboard; assert torch.version.cuda, 'pip replaced the CUDA torch'"

# The project itself: only its packages and setup.py (no tests, data or outputs); dependencies
# are all installed above, hence --no-deps. The import check runs with -I so that it imports the
# installed package, not the sources in this directory.
COPY setup.py ./
COPY tokenization/ tokenization/
COPY schemas/ schemas/
COPY spanwise_io/ spanwise_io/
COPY corpora/ corpora/
COPY modeling/ modeling/
COPY beam_pipelines/ beam_pipelines/
COPY trainer/ trainer/
RUN set -eux; \
    pip install --no-deps --no-build-isolation .; \
    rm -rf build ./*.egg-info; \
    python -I -c "import trainer.task, trainer.predict, beam_pipelines.preprocess"

# Run as an unprivileged user with a writable home (Hugging Face cache, relative output paths).
# uid 10001 rather than 1000: newer Ubuntu bases already have a user 1000 ("ubuntu").
RUN useradd --create-home --uid 10001 --user-group --shell /bin/bash spanwise
ENV HOME=/home/spanwise \
    HF_HOME=/home/spanwise/.cache/huggingface
USER 10001:10001
WORKDIR /home/spanwise

# Vertex AI passes the trainer's flags as the container's args; AIP_MODEL_DIR,
# AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR (from the job's baseOutputDirectory) are the
# trainer's defaults. Multi-GPU and multi-node jobs override the command with a torchrun launcher
# (see bin/submit-vertex.sh).
ENTRYPOINT ["python", "-m", "trainer.task"]
