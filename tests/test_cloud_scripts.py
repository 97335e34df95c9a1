"""The cloud side that can be tested without Docker or Google Cloud (design.md section 6).

* ``Dockerfile`` / ``.dockerignore``: parsed; in the trainer stage the pinned CUDA PyTorch base
  agrees with requirements.txt, the pinned requirements are installed, every package is copied,
  the user is not root, the entry point is ``python -m trainer.task``; the dataflow-worker stage
  is Beam's SDK image of the pinned Beam and our Python with Beam's boot entry point; the build
  context holds what the COPYs need and none of .git, .venv, outputs or caches.
* ``bin/register-image.sh`` and ``bin/submit-vertex.sh``: ``--dry-run`` output (the exact commands
  and the job spec), the real code path against stand-ins for ``gcloud`` and ``docker`` that record
  their argv, and the refusals.
* The torchrun launcher that ``submit-vertex.sh`` puts in multi-GPU / multi-node job specs, taken
  from the spec and run here with Vertex AI's environment (CLUSTER_SPEC, or MASTER_ADDR & co.):
  two "machines" on this host train together over gloo.
* ``bin/run_local.sh``: the AIP_* variables of ``--aip_dir`` reach the trainer in a real run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainer_helpers import REPO_ROOT, prep, subprocess_env, task_argv, tiny_model  # noqa: F401 (fixtures)

BIN = REPO_ROOT / "bin"
PACKAGES = ("tokenization", "schemas", "spanwise_io", "corpora", "modeling", "beam_pipelines", "trainer")
TRAINER_FLAGS = [
    "--data_dir", "gs://my-bucket/prep/bbc", "--model_name", "bert-base-uncased", "--task_name", "bbc",
    "--max_seq_length", "512", "--seq_len_func", "ht", "--seq_func_params", "128", "382", "--bf16",
]
IMAGE = "us-central1-docker.pkg.dev/my-proj/spanwise/spanwise-trainer:0123456789ab"


# --------------------------------------------------------------------------- Dockerfile parsing
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order: comments dropped, ``\\`` continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comment lines are dropped, also inside a continuation (as docker does)
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = pending + line
        pending = ""
        keyword, _, rest = whole.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def dockerfile_stages(instructions: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """``{stage name: its instructions}``, the global ARGs before the first FROM under ``""``."""
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for keyword, rest in instructions:
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+([a-z][a-z0-9-]*)", rest, re.I)
            assert match, f"unnamed stage: FROM {rest}"
            current = match.group(2)
            assert current not in stages, f"stage {current} twice"
            stages[current] = []
        stages[current].append((keyword, rest))
    return stages


@pytest.fixture(scope="module")
def dockerfile_all() -> list[tuple[str, str]]:
    return dockerfile_instructions((REPO_ROOT / "Dockerfile").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dockerfile(dockerfile_all) -> list[tuple[str, str]]:
    """The trainer stage (global ARGs first): the image a plain ``docker build .`` makes."""
    stages = dockerfile_stages(dockerfile_all)
    assert list(stages)[-1] == "trainer", "the trainer must be the last stage (docker build's default target)"
    return stages[""] + stages["trainer"]


@pytest.fixture(scope="module")
def worker_stage(dockerfile_all) -> list[tuple[str, str]]:
    return dockerfile_stages(dockerfile_all)["dataflow-worker"]


def _args(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for kw, rest in instructions if kw == keyword]


def _requirement_pin(name: str) -> str:
    text = (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8")
    match = re.search(rf"^{re.escape(name)}==(\S+)\s*$", text, re.M)
    assert match, f"requirements.txt pins no {name}"
    return match.group(1)


def test_base_image_is_a_pinned_cuda_pytorch_that_matches_requirements(dockerfile):
    args = dict(rest.split("=", 1) for rest in _args(dockerfile, "ARG") if "=" in rest)
    base = args["TORCH_IMAGE"]
    froms = _args(dockerfile, "FROM")
    assert froms == ["${TORCH_IMAGE} AS trainer"], "the trainer stage, on the pinned TORCH_IMAGE"
    assert dockerfile[0] == ("ARG", f"TORCH_IMAGE={base}")
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn(\d+)-runtime", base)
    assert match, f"not a pinned pytorch/pytorch CUDA runtime tag: {base}"
    assert match.group(1) == _requirement_pin("torch"), "the base image's torch must be requirements.txt's"
    assert "latest" not in base and "@" not in base


def test_runs_as_a_non_root_user(dockerfile):
    users = _args(dockerfile, "USER")
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    runs = " ".join(_args(dockerfile, "RUN"))
    assert re.search(rf"useradd\b.*--uid {re.escape(user)}\b", runs) or re.search(rf"useradd\b.*\b{re.escape(user)}$", runs)
    keywords = [kw for kw, _ in dockerfile]
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert "RUN" not in keywords[last_user:], "nothing runs as root after USER"
    assert keywords.index("ENTRYPOINT") > last_user


def test_entry_point_is_the_trainer(dockerfile):
    (entrypoint,) = _args(dockerfile, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["python", "-m", "trainer.task"]  # exec form: signals reach python
    assert not _args(dockerfile, "CMD"), "no default args: a job without trainer flags must fail, not print help"
    env = " ".join(_args(dockerfile, "ENV"))
    assert "PYTHONUNBUFFERED=1" in env and "HF_HUB_DISABLE_TELEMETRY=1" in env


def test_installs_the_pinned_requirements_without_replacing_the_image_torch(dockerfile):
    runs = _args(dockerfile, "RUN")
    (deps,) = [r for r in runs if "-r requirements.txt" in r]
    pip = next(part for part in deps.split(";") if "pip install" in part)
    words = shlex.split(pip)
    assert words[:2] == ["pip", "install"]
    assert words[words.index("-r") + 1] == "requirements.txt"
    constraints = [words[i + 1] for i, w in enumerate(words) if w == "-c"]
    assert "constraints.txt" in constraints
    # the torch already in the image is pinned to its exact build, and checked before and after
    assert "/tmp/torch-from-image.txt" in constraints and "torch.__version__" in deps
    assert deps.count("torch.version.cuda") >= 2
    # the pinned files are in the image before that RUN (and before the code, for layer reuse)
    assert dockerfile.index(("COPY", "requirements.txt constraints.txt ./")) < dockerfile.index(("RUN", deps))
    assert dockerfile.index(("RUN", deps)) < dockerfile.index(("COPY", "trainer/ trainer/"))
    (project,) = [r for r in runs if "pip install --no-deps" in r]
    assert re.search(r"pip install --no-deps (--no-build-isolation )?\.;", project)


def test_copies_every_package_and_nothing_else(dockerfile):
    copied = {}
    for rest in _args(dockerfile, "COPY"):
        *sources, dest = rest.split()
        for source in sources:
            copied[source.rstrip("/")] = dest
    top_level_packages = {p.name for p in REPO_ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"}
    assert top_level_packages == set(PACKAGES)
    for package in PACKAGES:
        assert copied.get(package) == f"{package}/"
    assert set(copied) == {*PACKAGES, "setup.py", "requirements.txt", "constraints.txt"}
    # setup.py installs the same packages
    included = re.search(r"find_packages\(include=\[([^\]]*)\]", (REPO_ROOT / "setup.py").read_text()).group(1)
    assert {name.strip().strip('"').rstrip("*") for name in included.split(",")} == set(PACKAGES)


def test_dataflow_worker_stage_is_beams_sdk_image_with_our_packages(dockerfile_all, worker_stage):
    """Dataflow runs a custom SDK container only with the submitting side's Beam and Python minor."""
    args = dict(rest.split("=", 1) for rest in _args(dockerfile_all, "ARG") if "=" in rest)
    match = re.fullmatch(r"apache/beam_python(\d+)\.(\d+)_sdk:(\S+)", args["BEAM_SDK_IMAGE"])
    assert match, args["BEAM_SDK_IMAGE"]
    assert match.group(3) == _requirement_pin("apache-beam[gcp]")
    assert (int(match.group(1)), int(match.group(2))) == sys.version_info[:2], "the Python jobs are submitted with"
    assert worker_stage[0] == ("FROM", "${BEAM_SDK_IMAGE} AS dataflow-worker")
    (entrypoint,) = _args(worker_stage, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["/opt/apache/beam/boot"]
    copied = {source.rstrip("/") for rest in _args(worker_stage, "COPY") for source in rest.split()[:-1]}
    assert copied == {*PACKAGES, "setup.py", "requirements.txt", "constraints.txt"}
    (install,) = [r for r in _args(worker_stage, "RUN") if "pip install" in r]
    words = shlex.split(next(part for part in install.split(";") if "pip install" in part))
    assert words[-1] == "." and words[words.index("-c") + 1] == "constraints.txt"
    assert "-r" not in words, "the workers need setup.py's install_requires only (no torch)"
    assert "apache_beam.__version__" in install


def test_the_pins_hold_nothing_that_fights_the_cuda_image():
    for name in ("requirements.txt", "constraints.txt"):
        for line in (REPO_ROOT / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            assert not re.match(r"(nvidia-|triton\b|pytorch-triton)", line, re.I), f"{name}: {line}"
            assert "+cpu" not in line, f"{name}: a CPU-only build pinned: {line}"


# --------------------------------------------------------------------------- .dockerignore
def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax (Go filepath.Match plus ``**``) as a regex over slash paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(rules: list[tuple[bool, re.Pattern[str]]], path: str) -> bool:
    """Whether docker leaves ``path`` out: the last rule matching it or a parent directory wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


@pytest.fixture(scope="module")
def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!")).lstrip("/")
        rules.append((negated, _dockerignore_regex(pattern)))
    return rules


@pytest.mark.parametrize("path", [
    ".git/HEAD", ".venv/bin/python", "out/demo/model/config.json", "data/train.tsv", "bench/preprocess.py",
    "bench/results/run.json", "tests/test_trainer.py", ".pytest_cache/v/cache/nodeids", ".hypothesis/examples/x",
    "trainer/__pycache__/task.cpython-311.pyc", "tokenization/.pytest_cache/x", "spanwise.egg-info/PKG-INFO",
    "docs/design.md", ".ci/run", "service-account.json", ".env",
])
def test_dockerignore_leaves_out(dockerignore, path):
    assert dockerignore_excludes(dockerignore, path)


def test_dockerignore_keeps_what_the_dockerfile_copies(dockerignore, dockerfile_all):
    sources = [s.rstrip("/") for rest in _args(dockerfile_all, "COPY") for s in rest.split()[:-1]]
    kept = 0
    for source in sources:
        path = REPO_ROOT / source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(REPO_ROOT).as_posix()
            if "__pycache__" in relative or relative.endswith(".pyc"):
                assert dockerignore_excludes(dockerignore, relative)
                continue
            assert not dockerignore_excludes(dockerignore, relative), f"{relative} is COPYed but left out of the context"
            kept += 1
    assert kept > 20


# --------------------------------------------------------------------------- running the scripts
FAKE_TOOL = """#!/usr/bin/env bash
# stand-in for {name}: records its argv (one JSON list a line), copies any --config file aside;
# the account probe (gcloud config get-value account, which reads local files only) is answered, not recorded
if [[ "{name} $*" == "gcloud config get-value account" ]]; then
  [[ -n "${{FAKE_NO_ACCOUNT:-}}" ]] || echo "dev@example.com"
  exit 0
fi
{python} - "$@" <<'PY'
import json, os, shutil, sys
log = os.environ["FAKE_LOG"]
args = sys.argv[1:]
with open(log, "a") as handle:
    handle.write(json.dumps(["{name}", *args]) + "\\n")
for arg in args:
    if arg.startswith("--config="):
        shutil.copy(arg.split("=", 1)[1], log + ".spec.yaml")
PY
case "{name} $*" in
  "gcloud artifacts repositories describe"*) exit 1 ;;
  "gcloud ai custom-jobs create"*) echo "projects/123/locations/us-central1/customJobs/4567" ;;
esac
exit 0
"""


@pytest.fixture
def fake_tools(tmp_path) -> dict[str, Any]:
    """``gcloud`` and ``docker`` stand-ins first on PATH; ``calls()`` reads what they were asked."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    for name in ("gcloud", "docker"):
        tool = bindir / name
        tool.write_text(FAKE_TOOL.format(name=name, python=sys.executable))
        tool.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", FAKE_LOG=str(log))

    def calls() -> list[list[str]]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return {"env": env, "calls": calls, "log": log}


def run_script(name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """``bin/NAME ARGS``; the trainer flag check runs with this Python (``PYTHON``), as with the project's .venv."""
    return subprocess.run(
        ["bash", str(BIN / name), *args], cwd=REPO_ROOT, env={"PYTHON": sys.executable, **(env or os.environ)},
        capture_output=True, text=True, timeout=timeout,
    )


def command_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("name", ["register-image.sh", "submit-vertex.sh", "run_local.sh"])
def test_scripts_are_executable_bash(name):
    path = BIN / name
    assert os.access(path, os.X_OK)
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    subprocess.run(["bash", "-n", str(path)], check=True)
    help_text = run_script(name, "--help")
    assert help_text.returncode == 0 and "Usage: bin/" + name in help_text.stdout


# --------------------------------------------------------------------------- register-image.sh
def test_register_image_dry_run_prints_the_exact_commands(fake_tools):
    proc = run_script("register-image.sh", "--project", "my-proj", "--tag", "v1", "--dry-run", env=fake_tools["env"])
    assert proc.returncode == 0, proc.stderr
    uri = "us-central1-docker.pkg.dev/my-proj/spanwise/spanwise-trainer:v1"
    lines = command_lines(proc.stdout)
    describe, create = lines[0].split(" || ")
    assert shlex.split(describe) == [
        "gcloud", "artifacts", "repositories", "describe", "spanwise", "--project=my-proj", "--location=us-central1",
        ">/dev/null", "2>&1",
    ]
    assert shlex.split(create) == [
        "gcloud", "artifacts", "repositories", "create", "spanwise", "--project=my-proj", "--location=us-central1",
        "--repository-format=docker", "--description=spanwise images (training, Dataflow workers)",
    ]
    assert [shlex.split(line) for line in lines[1:4]] == [
        ["gcloud", "auth", "configure-docker", "us-central1-docker.pkg.dev", "--quiet"],
        ["docker", "build", "--platform=linux/amd64", "--target=trainer", f"--tag={uri}", "."],
        ["docker", "push", uri],
    ]
    assert lines[4:] == [uri]  # the image URI, last
    assert fake_tools["calls"]() == []  # nothing ran


def test_register_image_options_and_quoting():
    proc = run_script("register-image.sh", "--project=my-proj", "--region", "europe-west4", "--repository", "ml",
                      "--image=trainer", "--tag", "exp-3", "--base_image", "pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime",
                      "--dry_run")
    assert proc.returncode == 0, proc.stderr
    lines = command_lines(proc.stdout)
    uri = "europe-west4-docker.pkg.dev/my-proj/ml/trainer:exp-3"
    assert shlex.split(lines[1]) == ["gcloud", "auth", "configure-docker", "europe-west4-docker.pkg.dev", "--quiet"]
    assert shlex.split(lines[2]) == [
        "docker", "build", "--platform=linux/amd64", "--target=trainer", f"--tag={uri}",
        "--build-arg=TORCH_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime", ".",
    ]
    assert lines[-1] == uri


def test_register_image_builds_the_dataflow_worker_target():
    proc = run_script("register-image.sh", "--project", "my-proj", "--tag", "v1", "--target", "dataflow-worker",
                      "--base-image", "apache/beam_python3.11_sdk:2.77.0", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = command_lines(proc.stdout)
    uri = "us-central1-docker.pkg.dev/my-proj/spanwise/spanwise-dataflow-worker:v1"
    assert shlex.split(lines[2]) == [
        "docker", "build", "--platform=linux/amd64", "--target=dataflow-worker", f"--tag={uri}",
        "--build-arg=BEAM_SDK_IMAGE=apache/beam_python3.11_sdk:2.77.0", ".",
    ]
    assert lines[-1] == uri
    # what bin/submit-dataflow.sh then takes
    submit = subprocess.run(
        ["bash", str(BIN / "submit-dataflow.sh"), "--project", "my-proj", "--bucket", "b-1", "--data_dir", "gs://b-1/c",
         "--output_dir", "gs://b-1/p", "--tokenizer", "bert-base-uncased", "--sdk_container_image", uri, "--dry-run"],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )
    assert submit.returncode == 0, submit.stderr
    words = shlex.split("\n".join(line for line in submit.stdout.splitlines() if not line.startswith("#")).replace("\\\n", " "))
    assert words[words.index("--sdk_container_image") + 1] == uri and "--setup_file" not in words


def test_register_image_runs_the_commands(fake_tools):
    proc = run_script("register-image.sh", "--project", "my-proj", "--tag", "v2", env=fake_tools["env"])
    assert proc.returncode == 0, proc.stderr
    uri = "us-central1-docker.pkg.dev/my-proj/spanwise/spanwise-trainer:v2"
    assert proc.stdout.splitlines()[-1] == uri
    assert fake_tools["calls"]() == [
        ["gcloud", "artifacts", "repositories", "describe", "spanwise", "--project=my-proj", "--location=us-central1"],
        ["gcloud", "artifacts", "repositories", "create", "spanwise", "--project=my-proj", "--location=us-central1",
         "--repository-format=docker", "--description=spanwise images (training, Dataflow workers)"],
        ["gcloud", "auth", "configure-docker", "us-central1-docker.pkg.dev", "--quiet"],
        ["docker", "build", "--platform=linux/amd64", "--target=trainer", f"--tag={uri}", "."],
        ["docker", "push", uri],
    ]


def test_register_image_tags_with_the_git_commit_by_default():
    sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    if sha.returncode != 0:
        pytest.skip("not a git checkout")
    proc = run_script("register-image.sh", "--project", "my-proj", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    uri = command_lines(proc.stdout)[-1]
    assert re.fullmatch(rf"us-central1-docker\.pkg\.dev/my-proj/spanwise/spanwise-trainer:{sha.stdout.strip()}(-dirty)?", uri)


@pytest.mark.parametrize("args, message", [
    ([], "--project is required"),
    (["--project"], "--project needs a value"),
    (["--project", "My Project"], "invalid project id"),
    (["--project", "my-proj", "--tag", "latest"], "refusing the tag 'latest'"),
    (["--project", "my-proj", "--regoin", "us-east1"], "unknown argument: --regoin"),
    (["--project", "my-proj", "--target", "worker"], "--target is trainer, dataflow-worker or predict-worker"),
])
def test_register_image_refuses_clearly(args, message, fake_tools):
    proc = run_script("register-image.sh", *args, "--dry-run", env=fake_tools["env"])
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stdout == ""
    assert fake_tools["calls"]() == []


# --------------------------------------------------------------------------- submit-vertex.sh
def submit_dry_run(tmp_path, *args: str, trainer_flags=TRAINER_FLAGS) -> tuple[dict[str, Any], list[str], str]:
    """Run ``submit-vertex.sh --dry-run``; return the spec (parsed), the command lines, stdout."""
    spec_file = tmp_path / "job.yaml"
    proc = run_script("submit-vertex.sh", "--project", "my-proj", "--spec_file", str(spec_file), *args, "--dry-run",
                      "--", *trainer_flags)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    printed = out.split(f"# --- job spec ({spec_file}) ---\n", 1)[1].split("# --- end of job spec ---\n", 1)[0]
    assert printed == spec_file.read_text()  # the spec printed is the file the command passes
    commands = command_lines(out.split("# --- end of job spec ---\n", 1)[1])
    return yaml.safe_load(printed), commands, out


def create_argv(line: str) -> list[str]:
    assert line.startswith("JOB=$(") and line.endswith(")")
    return shlex.split(line[len("JOB=$("):-1])


def test_submit_single_gpu_job(tmp_path):
    spec, commands, _ = submit_dry_run(
        tmp_path, "--image_uri", IMAGE, "--display_name", "bbc-t4", "--accelerator_type", "NVIDIA_TESLA_T4",
        "--base_output_dir", "gs://my-bucket/runs/bbc-1",
    )
    assert spec == {
        "workerPoolSpecs": [{
            "machineSpec": {"machineType": "n1-standard-8", "acceleratorType": "NVIDIA_TESLA_T4", "acceleratorCount": 1},
            "replicaCount": 1,
            "containerSpec": {"imageUri": IMAGE, "args": TRAINER_FLAGS},  # the image's entry point, no command
        }],
        "baseOutputDirectory": {"outputUriPrefix": "gs://my-bucket/runs/bbc-1/"},
    }
    assert len(commands) == 2
    assert create_argv(commands[0]) == [
        "gcloud", "ai", "custom-jobs", "create", "--project=my-proj", "--region=us-central1", "--display-name=bbc-t4",
        f"--config={tmp_path / 'job.yaml'}", "--format=value(name)",
    ]
    assert shlex.split(commands[1]) == [
        "gcloud", "ai", "custom-jobs", "stream-logs", "--project=my-proj", "--region=us-central1", "$JOB",
    ]
    assert commands[1].endswith(' "$JOB"')


def _launcher(pool: dict[str, Any]) -> tuple[list[str], str]:
    command = pool["containerSpec"]["command"]
    assert command[:3] == ["python", "-m", "trainer.vertex_launch"] and len(command) == 4
    return command[:3], command[3]


def test_submit_two_node_spot_job(tmp_path):
    sa = "trainer@my-proj.iam.gserviceaccount.com"
    board = "projects/123/locations/us-central1/tensorboards/456"
    spec, commands, out = submit_dry_run(
        tmp_path, "--image_uri", IMAGE, "--machine_type", "a2-highgpu-2g", "--accelerator_type", "NVIDIA_TESLA_A100",
        "--accelerator_count", "2", "--replica_count", "2", "--spot", "--service_account", sa, "--tensorboard", board,
        "--base_output_dir", "gs://my-bucket/runs/bbc-2/", "--env", "NCCL_DEBUG=INFO",
    )
    primary, workers = spec["workerPoolSpecs"]
    machine = {"machineType": "a2-highgpu-2g", "acceleratorType": "NVIDIA_TESLA_A100", "acceleratorCount": 2}
    assert primary["machineSpec"] == workers["machineSpec"] == machine
    assert primary["replicaCount"] == 1 and workers["replicaCount"] == 1
    assert primary["containerSpec"] == workers["containerSpec"]
    container = primary["containerSpec"]
    assert container["imageUri"] == IMAGE and container["args"] == TRAINER_FLAGS
    assert container["env"] == [{"name": "NCCL_DEBUG", "value": "INFO"}]
    _, nproc = _launcher(primary)
    assert nproc == "2"  # one process per GPU
    assert spec["scheduling"] == {"strategy": "SPOT"}
    assert spec["baseOutputDirectory"] == {"outputUriPrefix": "gs://my-bucket/runs/bbc-2/"}
    assert spec["serviceAccount"] == sa and spec["tensorboard"] == board
    assert "containerSpec: *container" in out  # the workers are the primary's machine and container
    assert len(commands) == 2 and create_argv(commands[0])[3] == "create"


@pytest.mark.parametrize("args, pools, nproc", [
    ([], [1], None),  # CPU, one machine: the entry point
    (["--accelerator_type", "NVIDIA_L4"], [1], None),
    (["--accelerator_type", "NVIDIA_L4", "--accelerator_count", "4"], [1], "4"),
    (["--replica_count", "4"], [1, 3], "1"),  # CPU machines: one process each
    (["--accelerator_type", "NVIDIA_H100_80GB", "--accelerator_count", "8", "--replica_count", "3"], [1, 2], "8"),
])
def test_submit_cluster_shapes(tmp_path, args, pools, nproc):
    spec, _, _ = submit_dry_run(tmp_path, "--image_uri", IMAGE, "--base_output_dir", "gs://my-bucket/r", *args)
    assert [pool["replicaCount"] for pool in spec["workerPoolSpecs"]] == pools
    for pool in spec["workerPoolSpecs"]:
        if nproc is None:
            assert "command" not in pool["containerSpec"]
        else:
            assert _launcher(pool)[1] == nproc
        assert pool["containerSpec"]["args"] == TRAINER_FLAGS
    assert "scheduling" not in spec and "serviceAccount" not in spec


def test_submit_passes_any_trainer_flag_through_verbatim(tmp_path):
    flags = [
        "--data_dir", "gs://my-bucket/prep dir", "--model_name", "m", "--task_name", "it's \"quoted\" $HOME `x` \\ ü\ttab",
        "--output_dir=gs://my-bucket/out", "--seq_len_func", "ht", "--seq_func_params", "1", "2",
    ]
    spec, _, _ = submit_dry_run(tmp_path, "--image_uri", IMAGE, "--no-stream-logs", trainer_flags=flags)
    assert spec["workerPoolSpecs"][0]["containerSpec"]["args"] == flags
    assert "baseOutputDirectory" not in spec


def test_submit_image_defaults_to_what_register_image_pushes(tmp_path):
    spec, commands, _ = submit_dry_run(tmp_path, "--region", "europe-west4", "--tag", "v7", "--base_output_dir", "gs://my-bucket/r")
    assert spec["workerPoolSpecs"][0]["containerSpec"]["imageUri"] == "europe-west4-docker.pkg.dev/my-proj/spanwise/spanwise-trainer:v7"
    assert "--region=europe-west4" in create_argv(commands[0])
    assert re.fullmatch(r"--display-name=spanwise-\d{8}-\d{6}", create_argv(commands[0])[6])


def test_submit_without_streaming(tmp_path):
    _, commands, _ = submit_dry_run(tmp_path, "--image_uri", IMAGE, "--base_output_dir", "gs://my-bucket/r", "--no-stream-logs")
    assert len(commands) == 1 and create_argv(commands[0])[:4] == ["gcloud", "ai", "custom-jobs", "create"]


def test_submit_runs_create_then_streams_the_logs(fake_tools):
    proc = run_script("submit-vertex.sh", "--project", "my-proj", "--image_uri", IMAGE, "--display_name", "run-1",
                      "--base_output_dir", "gs://my-bucket/r", "--", *TRAINER_FLAGS, env=fake_tools["env"])
    assert proc.returncode == 0, proc.stderr
    job = "projects/123/locations/us-central1/customJobs/4567"
    create, stream = fake_tools["calls"]()
    config = next(arg.split("=", 1)[1] for arg in create if arg.startswith("--config="))
    assert create == ["gcloud", "ai", "custom-jobs", "create", "--project=my-proj", "--region=us-central1",
                      "--display-name=run-1", f"--config={config}", "--format=value(name)"]
    assert stream == ["gcloud", "ai", "custom-jobs", "stream-logs", "--project=my-proj", "--region=us-central1", job]
    spec = yaml.safe_load(Path(str(fake_tools["log"]) + ".spec.yaml").read_text())
    assert spec["workerPoolSpecs"][0]["containerSpec"]["args"] == TRAINER_FLAGS
    assert not Path(config).exists()  # the temporary spec is removed afterwards
    assert f"submitted: {job}" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--", *TRAINER_FLAGS], "--project is required"),
    (["--project", "my-proj", "--accelerator_count", "2", "--", *TRAINER_FLAGS], "needs --accelerator_type"),
    (["--project", "my-proj", "--accelerator_type", "NVIDIA_L4", "--accelerator_count", "0", "--", *TRAINER_FLAGS],
     "needs --accelerator_count >= 1"),
    (["--project", "my-proj", "--accelerator_type", "TPU_V3", "--", *TRAINER_FLAGS], "must be an NVIDIA GPU"),
    (["--project", "my-proj", "--replica_count", "0", "--", *TRAINER_FLAGS], "--replica_count must be a positive integer"),
    (["--project", "my-proj", "--base_output_dir", "/local/dir", "--", *TRAINER_FLAGS], "must be a gs:// URI"),
    (["--project", "my-proj", "--base_output_dir", "gs://my-bucket/r", "--tensorboard", "projects/1/locations/us-central1/tensorboards/2",
      "--", *TRAINER_FLAGS], "--tensorboard needs --service_account"),
    (["--project", "my-proj", "--", *TRAINER_FLAGS], "say where the model goes"),
    (["--project", "my-proj", "--base_output_dir", "gs://my-bucket/r"], "no trainer flags"),
    (["--project", "my-proj", "--base_output_dir", "gs://my-bucket/r", "--", *TRAINER_FLAGS, "--fp16"], "choose one of --bf16 and --fp16"),
    (["--project", "my-proj", "--base_output_dir", "gs://my-bucket/r", "--", *TRAINER_FLAGS, "--bogus_flag", "1"],
     "unrecognized arguments: --bogus_flag"),
    (["--project", "my-proj", "--base_output_dir", "gs://my-bucket/r", "--", "--help"], "--help among the trainer flags"),
    (["--project", "my-proj", "--base_output_dir", "gs://my-bucket/r", "--env", "AIP_MODEL_DIR=x", "--", *TRAINER_FLAGS], "Vertex AI sets it"),
    (["--project", "my-proj", "--image_uri", "r/p:latest", "--base_output_dir", "gs://my-bucket/r", "--", *TRAINER_FLAGS], "latest"),
    (["--project", "my-proj", "--data_dir", "gs://b/p"], "trainer flags go after --"),
    (["--project", "my-proj", "--image", "us-central1-docker.pkg.dev/my-proj/spanwise/spanwise-trainer:v1",
      "--base_output_dir", "gs://my-bucket/r", "--", *TRAINER_FLAGS], "a whole image URI goes to --image_uri"),
    (["--project", "my-proj", "--base_output_dir", "gs://my-bucket/r", "--", *TRAINER_FLAGS, "--task_name", "a\x01b"],
     "a control character in an argument"),
])
def test_submit_refuses_clearly(args, message, fake_tools):
    proc = run_script("submit-vertex.sh", *args, env=fake_tools["env"])
    assert proc.returncode == 2, proc.stdout
    assert message in proc.stderr
    assert proc.stdout == "" and fake_tools["calls"]() == []


# --------------------------------------------------------------------------- the launcher, run here
def launcher_from_spec(tmp_path, *args: str) -> tuple[str, str]:
    spec, _, _ = submit_dry_run(tmp_path, "--image_uri", IMAGE, "--base_output_dir", "gs://my-bucket/r", *args)
    return _launcher(spec["workerPoolSpecs"][0])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cluster_spec(port: int, pool: str, index: int) -> str:
    return json.dumps({
        "cluster": {"workerpool0": [f"127.0.0.1:{port}"], "workerpool1": [f"127.0.0.1:{port}"]},
        "environment": "cloud",
        "task": {"type": pool, "index": index},
    })


def _run_machines(command: list[str], nproc: str, flags: list[str], envs: list[dict[str, str]], timeout: float = 300):
    procs = [
        subprocess.Popen([sys.executable, *command[1:], nproc, *flags], cwd=REPO_ROOT, env=subprocess_env(**env),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for env in envs
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]
    return outputs


def test_launcher_one_machine_several_gpus_is_standalone_torchrun(tmp_path):
    script, nproc = launcher_from_spec(tmp_path, "--accelerator_type", "NVIDIA_L4", "--accelerator_count", "2")
    # Vertex AI sets CLUSTER_SPEC for a one-replica job too: one machine, so a standalone torchrun
    spec = json.dumps({"cluster": {"workerpool0": ["cmle-training-workerpool0-1-0:2222"]}, "environment": "cloud",
                       "task": {"type": "workerpool0", "index": 0}})
    (output,) = _run_machines(script, nproc, ["--help"], [{"CLUSTER_SPEC": spec}])
    assert "spanwise launcher: torchrun --standalone --nnodes=1 --nproc_per_node=2 -m trainer.task --help" in output
    assert output.count("usage: python -m trainer.task") == 2  # one trainer process per GPU


def test_launcher_without_cluster_spec_uses_the_per_machine_pytorch_variables(tmp_path):
    script, nproc = launcher_from_spec(tmp_path, "--replica_count", "2")
    port = str(_free_port())
    base = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2"}
    outputs = _run_machines(script, nproc, ["--help"], [{**base, "RANK": "0"}, {**base, "RANK": "1"}], timeout=120)
    for rank, output in enumerate(outputs):
        assert (f"spanwise launcher: torchrun --nnodes=2 --node_rank={rank} --master_addr=127.0.0.1 --master_port={port} "
                "--nproc_per_node=1 -m trainer.task --help") in output
        assert "usage: python -m trainer.task" in output


def test_launcher_two_machines_train_together(prep, tiny_model, tmp_path):  # noqa: F811
    """The job spec's launcher on two "machines" (processes with Vertex AI's CLUSTER_SPEC): one run, world size 2."""
    script, nproc = launcher_from_spec(tmp_path, "--replica_count", "2")
    out, trace = tmp_path / "out", tmp_path / "trace.jsonl"
    flags = task_argv(prep["data_dir"], tiny_model, str(out), "--max_steps", "3", "--eval_strategy", "no",
                      "--sample_trace_file", str(trace))
    port = _free_port()
    outputs = _run_machines(script, nproc, flags, [
        {"CLUSTER_SPEC": _cluster_spec(port, "workerpool0", 0)},
        {"CLUSTER_SPEC": _cluster_spec(port, "workerpool1", 0)},
    ])
    for rank, output in enumerate(outputs):
        assert f"--nnodes=2 --node_rank={rank} --master_addr=127.0.0.1 --master_port={port} --nproc_per_node=1" in output
    assert json.loads((out / "run_config.json").read_text())["world_size"] == 2
    assert (out / "config.json").is_file()
    traces = [[json.loads(line) for line in (tmp_path / f"trace.rank{rank}.jsonl").read_text().splitlines()] for rank in (0, 1)]
    assert [len(records) for records in traces] == [3, 3]  # both machines trained the same 3 steps
    ids = [{doc for record in records for doc in record["ids"]} for records in traces]
    assert ids[0] and ids[1] and not ids[0] & ids[1]  # on disjoint shares of the data


# --------------------------------------------------------------------------- run_local.sh
def test_run_local_dry_run_mimics_vertex(tmp_path):
    proc = run_script("run_local.sh", "--aip_dir", str(tmp_path / "aip"), "--nproc", "2", "--dry-run", "--", "--data_dir", "d x")
    assert proc.returncode == 0, proc.stderr
    setup, command = command_lines(proc.stdout)
    assert setup == "bin/setup-env.sh"
    words = shlex.split(command)
    aip = str(tmp_path / "aip")
    assert words[:7] == ["env", "PYTHONUNBUFFERED=1", "HF_HUB_DISABLE_TELEMETRY=1", "TOKENIZERS_PARALLELISM=false",
                         f"AIP_MODEL_DIR={aip}/model/", f"AIP_CHECKPOINT_DIR={aip}/checkpoints/", f"AIP_TENSORBOARD_LOG_DIR={aip}/logs/"]
    assert words[8:] == ["-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
                         "-m", "trainer.task", "--data_dir", "d x"]
    env = {key: value for key, value in os.environ.items() if key != "SPANWISE_VENV"}
    plain = run_script("run_local.sh", "--no-setup", "--dry-run", "--data_dir", "d", env=env)
    assert command_lines(plain.stdout) == [
        "env PYTHONUNBUFFERED=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false .venv/bin/python -m trainer.task --data_dir d"
    ]


def test_run_local_trains_into_the_aip_directories(prep, tiny_model, tmp_path):  # noqa: F811
    argv = task_argv(prep["data_dir"], tiny_model, "unused", "--max_steps", "2")
    i = argv.index("--output_dir")
    del argv[i : i + 2]  # AIP_MODEL_DIR is the default, as on Vertex AI
    aip = tmp_path / "aip"
    env = subprocess_env(SPANWISE_VENV=sys.prefix)
    proc = subprocess.run(["bash", str(BIN / "run_local.sh"), "--no-setup", "--aip_dir", str(aip), "--", *argv],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (aip / "model" / "config.json").is_file()
    assert (aip / "checkpoints" / "checkpoint-00000002" / "COMPLETE").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in (aip / "logs").iterdir())


# --------------------------------------------------------------------------- tools, credentials, names
# what the scripts run besides the cloud tools
BASIC_TOOLS = ("bash", "cat", "cut", "date", "dirname", "env", "git", "grep", "mkdir", "mktemp", "rm", "sed", "sha256sum", "tr")


def _path_without_gcloud(tmp_path, *tools: str) -> str:
    """A PATH of the basic tools and stand-ins of ``tools`` only: no gcloud (this machine has one) unless named."""
    bindir = tmp_path / ("tools-" + "-".join(tools))
    bindir.mkdir(exist_ok=True)
    for name in BASIC_TOOLS:
        (bindir / name).symlink_to(shutil.which(name))
    for name in tools:
        tool = bindir / name
        tool.write_text(FAKE_TOOL.format(name=name, python=sys.executable))
        tool.chmod(0o755)
    return str(bindir)


def _one_line_refusal(proc: subprocess.CompletedProcess, prog: str, message: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"{prog}: ") and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_register_image_without_gcloud_says_so_in_one_line(tmp_path):
    env = dict(os.environ, PATH=_path_without_gcloud(tmp_path, "docker"), FAKE_LOG=str(tmp_path / "calls.jsonl"))
    proc = run_script("register-image.sh", "--project", "my-proj", "--tag", "v1", env=env)
    _one_line_refusal(proc, "register-image", "gcloud not found: install the Google Cloud SDK")
    assert not (tmp_path / "calls.jsonl").exists()  # docker was not run either
    proc = run_script("register-image.sh", "--project", "my-proj", "--tag", "v1",
                      env=dict(env, PATH=_path_without_gcloud(tmp_path)))
    _one_line_refusal(proc, "register-image", "docker not found")


def test_submit_vertex_without_gcloud_or_an_account_says_so_in_one_line(tmp_path, fake_tools):
    args = ["--project", "my-proj", "--image_uri", IMAGE, "--base_output_dir", "gs://my-bucket/r", "--", *TRAINER_FLAGS]
    proc = run_script("submit-vertex.sh", *args, env=dict(os.environ, PATH=_path_without_gcloud(tmp_path)))
    _one_line_refusal(proc, "submit-vertex", "gcloud not found: install the Google Cloud SDK")
    proc = run_script("submit-vertex.sh", *args, env=dict(fake_tools["env"], FAKE_NO_ACCOUNT="1"))
    _one_line_refusal(proc, "submit-vertex", "gcloud has no active account: run gcloud auth login")
    assert fake_tools["calls"]() == []  # no job was created


DATAFLOW_ARGS = ["--project", "my-proj", "--bucket", "my-bucket", "--data_dir", "gs://my-bucket/corpus",
                 "--output_dir", "gs://my-bucket/prep", "--tokenizer", "bert-base-uncased"]


def test_submit_dataflow_without_credentials_says_so_in_one_line(tmp_path):
    """Before: 482 lines and 16 tracebacks over 2m41s from the Dataflow client; now one line, before Python runs."""
    home = tmp_path / "home"
    home.mkdir()
    base = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG")}
    env = dict(base, HOME=str(home), PATH=_path_without_gcloud(tmp_path))
    proc = run_script("submit-dataflow.sh", *DATAFLOW_ARGS, env=env)
    _one_line_refusal(proc, "submit-dataflow", "no Google Cloud credentials and no gcloud: install the Google Cloud SDK")
    proc = run_script("submit-dataflow.sh", *DATAFLOW_ARGS, env=dict(env, PATH=_path_without_gcloud(tmp_path, "gcloud")))
    _one_line_refusal(proc, "submit-dataflow", "no Google Cloud credentials: run gcloud auth application-default login")
    proc = run_script("submit-dataflow.sh", *DATAFLOW_ARGS,
                      env=dict(env, GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "key.json")))
    _one_line_refusal(proc, "submit-dataflow", f"GOOGLE_APPLICATION_CREDENTIALS is {tmp_path / 'key.json'}, which does not exist")
    # the dry run needs no credentials
    assert run_script("submit-dataflow.sh", *DATAFLOW_ARGS, "--dry-run", env=env).returncode == 0


@pytest.mark.parametrize("bucket, reason", [
    ("b", "it has 1 character; bucket names have 3 to 63"),
    ("My-Bucket", "only lowercase letters, digits, '-', '_' and '.' are allowed"),
    ("-bucket", "it must start and end with a letter or a digit"),
    ("b" * 64, "it has 64 characters; bucket names have 3 to 63 (up to 222 with dots)"),
    ("192.168.5.4", "it looks like an IP address"),
    ("goog-data", "it begins with 'goog'"),
    ("my-g00gle-data", "it contains 'google' or a look-alike"),
    ("my..bucket", "it has an empty part between dots"),
    ("a." + "b" * 64, f"its part '{'b' * 64}' has 64 characters; each dot-separated part has at most 63"),
])
def test_bucket_names_are_checked_by_the_real_rules(tmp_path, bucket, reason):
    proc = run_script("submit-vertex.sh", "--project", "my-proj", "--base_output_dir", f"gs://{bucket}/runs", "--dry-run",
                      "--", *TRAINER_FLAGS)
    _one_line_refusal(proc, "submit-vertex", f"--base_output_dir gs://{bucket}/runs: '{bucket}' is not a valid bucket name: {reason}")
    proc = run_script("submit-dataflow.sh", *DATAFLOW_ARGS[:2], "--bucket", bucket, *DATAFLOW_ARGS[4:], "--dry-run")
    _one_line_refusal(proc, "submit-dataflow", f"--bucket {bucket} is not a valid bucket name: {reason}")


@pytest.mark.parametrize("bucket", ["abc", "my_bucket-1", "b" * 63, "data.example.com", "a" * 63 + "." + "b" * 63])
def test_valid_bucket_names_pass(tmp_path, bucket):
    spec, _, _ = submit_dry_run(tmp_path, "--image_uri", IMAGE, "--base_output_dir", f"gs://{bucket}/runs")
    assert spec["baseOutputDirectory"]["outputUriPrefix"] == f"gs://{bucket}/runs/"


def _with(flags: list[str], **values: str) -> list[str]:
    out = list(flags)
    for flag, value in values.items():
        i = out.index(f"--{flag}")
        count = 2 if flag == "seq_func_params" else 1
        out[i + 1 : i + 1 + count] = value.split()
    return out


def test_vertex_dry_run_runs_the_trainers_checks(tmp_path, tiny_model):  # noqa: F811
    """ht 400 400 at max_seq_length 512 is refused here, not by the job; with the model's tokenizer
    on this machine, its special tokens count too."""
    proc = run_script("submit-vertex.sh", "--project", "my-proj", "--base_output_dir", "gs://my-bucket/r", "--dry-run",
                      "--", *_with(TRAINER_FLAGS, seq_func_params="400 400"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "the trainer flags would fail the job" in proc.stderr
    assert "ht 400 400 needs 800 content tokens but --max_seq_length 512 leaves 512" in proc.stderr
    assert "the tokenizer bert-base-uncased is not on this machine, so its special tokens were not counted" in proc.stderr
    local = _with(TRAINER_FLAGS, model_name=tiny_model, seq_func_params="128 383")
    proc = run_script("submit-vertex.sh", "--project", "my-proj", "--base_output_dir", "gs://my-bucket/r", "--dry-run",
                      "--", *local)
    assert proc.returncode == 2 and "ht 128 383 needs 511 content tokens but --max_seq_length 512 leaves 510 after 2 special tokens" in proc.stderr
    # a hub tokenizer that is not here: checked without special tokens, and said so
    _, _, out = submit_dry_run(tmp_path, "--image_uri", IMAGE, "--base_output_dir", "gs://my-bucket/r",
                               trainer_flags=_with(TRAINER_FLAGS, seq_func_params="128 383"))
    assert "JOB=$(" in out
    proc = run_script("submit-vertex.sh", "--project", "my-proj", "--image_uri", IMAGE, "--base_output_dir", "gs://my-bucket/r",
                      "--dry-run", "--", *_with(TRAINER_FLAGS, seq_func_params="128 383"))
    assert "note: --seq_func_params were checked against --max_seq_length 512, but the tokenizer bert-base-uncased is not on this machine" in proc.stderr

