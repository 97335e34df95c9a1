"""Batch prediction on Dataflow GPU workers, tested offline.

* ``bin/submit-predict.sh --dry-run``: the exact ``python -m beam_pipelines.predict`` command (the
  GPU service option, machine type, container, threads, device) and the refusals; ``--help``; the
  credentials check; ``bin/register-image.sh --target predict-worker`` and the Dockerfile's
  predict-worker stage (Beam's SDK image plus a CUDA torch of requirements.txt's version).
* The real DataflowRunner submission of ``beam_pipelines.predict.run``, with no network and no
  credentials, as ``test_dataflow_submit.py`` does for preprocessing: the command the script
  prints goes to a fake Dataflow API (``fake_dataflow.py``), the model, documents and staging
  to the GCS emulator; the request must carry the GPU worker pool and our transforms. The fake
  plays the workers: when the job is created, ``summary.json`` appears in ``--output_dir``.
  Then the script itself, for real.
* The pipeline itself (Beam's FnApiRunner, here) with the model, the documents and the output
  all in ``gs://`` on the emulator: the predictions, rejected rows and summary are those of the
  same run on local paths.

One tiny model is trained once for the module (1 epoch).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import spanwise_io
from fake_dataflow import FakeDataflow
from gcs_emulator import GcsEmulator, gcs_emulator_fixtures
from test_cloud_scripts import _args, _requirement_pin, dockerfile_instructions, dockerfile_stages
from test_dataflow_submit import CUSTOM_IMAGE, _staged, _transforms, dry_run_words, fast_polling, flag_values  # noqa: F401
from trainer_helpers import prep, task_argv, tiny_model, train_in_process  # noqa: F401 (fixtures)

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "bin" / "submit-predict.sh"
BUCKET = "spanwise-predict-test"
IMAGE = "us-central1-docker.pkg.dev/my-proj/spanwise/spanwise-predict-worker:0123456789ab"
L4 = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
# Our PTransform labels (beam_pipelines/predict.py build_pipeline); on Dataflow the rejected rows
# meet through the runner's shuffle ("GroupRejected/Group"), not spill files.
OUR_TRANSFORMS = (
    "ListTasks", "SpreadTasks", "Read", "Views", "RunInference", "Scores", "PoolViews", "KeepFirstOfId", "ToRecord", "ToJson",
    "WritePredictions", "Tally", "AllRejected", "BatchRejected", "GroupRejected", "GroupRejected/Group",
    "WriteRejected", "FinalizeTrigger", "Finalize",
)

predict_gcs_server, gcs = gcs_emulator_fixtures(bucket=BUCKET, server_name="predict_gcs_server", name="gcs")


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    """The gs:// model is copied to ~/.cache/spanwise: keep that in the test's own folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def script(*args: str, env: dict[str, str] | None = None, path: Path = SCRIPT) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_CLOUD_PROJECT", "PYTHON")}
    return subprocess.run(["bash", str(path), *args], capture_output=True, text=True, env={**base, **(env or {})},
                          timeout=180, cwd=REPO_ROOT)


# --------------------------------------------------------------------------- (a) the script's dry run

TYPICAL = [
    "--project", "my-proj", "--region", "europe-west4", "--bucket", "my-bucket",
    "--model_dir", "gs://my-bucket/runs/bbc", "--input_files", "gs://my-bucket/docs/*.jsonl", "gs://my-bucket/more/a.tsv",
    "--output_dir", "gs://my-bucket/predictions/bbc", "--sdk_container_image", IMAGE, "--job_name", "spanwise-predict-bbc",
]
PASS_THROUGH = ["--eval_views", "chunks", "--batch_size", "64", "--bf16", "--labels", "team=nlp ops"]


def test_dry_run_prints_the_exact_command_one_flag_per_line():
    result = script(*TYPICAL, "--dry-run", "--", *PASS_THROUGH, env={"PYTHON": "/nonexistent/python"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# dry run: nothing is executed") and str(REPO_ROOT) in lines[0]
    assert lines[1] == "/nonexistent/python -m beam_pipelines.predict \\"
    assert all(line.startswith("  --") for line in lines[2:]), lines  # one flag (and its values) per line
    assert all(line.endswith(" \\") for line in lines[1:-1]) and not lines[-1].endswith("\\")
    assert f"  --dataflow_service_options '{L4}' \\" in lines  # shell-quoted (the ;)
    assert "  --input_files 'gs://my-bucket/docs/*.jsonl' gs://my-bucket/more/a.tsv \\" in lines
    assert dry_run_words(result.stdout) == [
        "/nonexistent/python", "-m", "beam_pipelines.predict",
        "--runner", "DataflowRunner",
        "--project", "my-proj",
        "--region", "europe-west4",
        "--job_name", "spanwise-predict-bbc",
        "--model_dir", "gs://my-bucket/runs/bbc",
        "--input_files", "gs://my-bucket/docs/*.jsonl", "gs://my-bucket/more/a.tsv",
        "--output_dir", "gs://my-bucket/predictions/bbc",
        "--temp_location", "gs://my-bucket/dataflow/tmp",
        "--staging_location", "gs://my-bucket/dataflow/staging",
        "--sdk_container_image", IMAGE,
        "--worker_machine_type", "g2-standard-4",
        "--max_num_workers", "4",
        "--disk_size_gb", "50",
        "--number_of_worker_harness_threads", "1",
        "--dataflow_service_options", L4,
        "--device", "cuda",
        *PASS_THROUGH,
    ]
    assert result.stderr == ""


def test_the_command_parses_as_the_pipeline_and_beam_take_it():
    """predict's own parser takes our flags, Beam's PipelineOptions the rest, nothing is left over."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, WorkerOptions

    from beam_pipelines.predict import build_parser

    result = script(*TYPICAL, "--dry-run", "--", "--eval_views", "chunks", "--bf16")
    opts, beam_argv = build_parser().parse_known_args(dry_run_words(result.stdout)[3:])
    assert opts.input_files == ["gs://my-bucket/docs/*.jsonl", "gs://my-bucket/more/a.tsv"]
    assert opts.device == "cuda" and opts.bf16 and opts.eval_views == "chunks"
    options = PipelineOptions(beam_argv)
    assert options.view_as(GoogleCloudOptions).dataflow_service_options == [L4]
    workers = options.view_as(WorkerOptions)
    assert workers.machine_type == "g2-standard-4" and workers.disk_size_gb == 50 and workers.max_num_workers == 4
    assert workers.sdk_container_image == IMAGE
    known = options.get_all_options(drop_default=True, retain_unknown_options=True)
    assert "model_dir" not in known and "device" not in known


@pytest.mark.parametrize("args, machine, accelerator, device", [
    ([], "g2-standard-4", L4, "cuda"),
    (["--gpu-type=nvidia-tesla-t4", "--gpu_count", "2"], "n1-standard-4",
     "worker_accelerator=type:nvidia-tesla-t4;count:2;install-nvidia-driver", "cuda"),
    (["--gpu_type", "nvidia-l4", "--machine-type", "g2-standard-8", "--mps"], "g2-standard-8", L4 + ";use_nvidia_mps", "cuda"),
    (["--gpu_type", "nvidia-tesla-a100", "--machine_type", "a2-highgpu-1g"], "a2-highgpu-1g",
     "worker_accelerator=type:nvidia-tesla-a100;count:1;install-nvidia-driver", "cuda"),
    (["--no_gpu"], "n1-standard-4", None, "cpu"),
    (["--no-gpu", "--machine_type", "n2-highmem-8", "--gpu_count", "3"], "n2-highmem-8", None, "cpu"),  # GPU flags unused
], ids=["default-l4", "t4x2", "l4-mps", "a100", "no-gpu", "no-gpu-n2"])
def test_gpu_options(args, machine, accelerator, device):
    result = script(*TYPICAL, *args, "--dry_run")
    assert result.returncode == 0, result.stderr
    flags = flag_values(dry_run_words(result.stdout)[3:])
    assert flags["--worker_machine_type"] == [machine]
    assert flags["--device"] == [device]
    if accelerator is None:
        assert "--dataflow_service_options" not in flags and "worker_accelerator" not in result.stdout
    else:
        assert flags["--dataflow_service_options"] == [accelerator]
    assert flags["--number_of_worker_harness_threads"] == ["1"] and flags["--sdk_container_image"] == [IMAGE]


def test_dry_run_options_defaults_and_spellings():
    args = [a for a in TYPICAL if a not in ("--job_name", "spanwise-predict-bbc", "--bucket", "my-bucket")]
    result = script(*args, "--temp-location=gs://my-bucket/df/tmp/", "--max_workers=16", "--worker-threads", "2",
                    "--disk_size_gb", "100", "--service_account", "p@my-proj.iam.gserviceaccount.com", "--network", "vpc-1",
                    "--subnetwork", "regions/europe-west4/subnetworks/s1", "--no-wait", "--dry-run")
    assert result.returncode == 0, result.stderr
    words = dry_run_words(result.stdout)
    assert words[:3] == [".venv/bin/python", "-m", "beam_pipelines.predict"]
    flags = flag_values(words[3:])
    assert flags["--temp_location"] == ["gs://my-bucket/df/tmp"] and flags["--staging_location"] == ["gs://my-bucket/df/staging"]
    assert flags["--max_num_workers"] == ["16"] and flags["--number_of_worker_harness_threads"] == ["2"]
    assert flags["--disk_size_gb"] == ["100"] and flags["--service_account_email"] == ["p@my-proj.iam.gserviceaccount.com"]
    assert flags["--network"] == ["vpc-1"] and flags["--subnetwork"] == ["regions/europe-west4/subnetworks/s1"]
    assert re.fullmatch(r"spanwise-predict-\d{8}-\d{6}", flags["--job_name"][0])
    assert words[-1] == "--no_wait_until_finish" and "--setup_file" not in flags


def _replace(args: list[str], flag: str, *values: str) -> list[str]:
    out = list(args)
    i = out.index(flag)
    end = i + 1
    while end < len(out) and not out[end].startswith("--"):
        end += 1
    out[i:end] = [flag, *values] if values else []
    return out


@pytest.mark.parametrize("args, message", [
    (_replace(TYPICAL, "--model_dir", str(REPO_ROOT)), "--model_dir must be a gs:// URI (the Dataflow workers read it)"),
    (_replace(TYPICAL, "--model_dir", "bert-base-uncased"), "copy the model folder to gs://"),
    (_replace(TYPICAL, "--model_dir"), "--model_dir is required"),
    (_replace(TYPICAL, "--input_files", "gs://my-bucket/a.tsv", "/data/b.tsv"), "--input_files must be gs:// URIs"),
    (_replace(TYPICAL, "--input_files"), "--input_files is required"),
    (_replace(TYPICAL, "--input_files", "gs://My_Bucket/a.tsv"), "--input_files gs://My_Bucket/a.tsv: 'My_Bucket' is not a valid bucket name"),
    (_replace(TYPICAL, "--output_dir", "out/predictions"), "--output_dir must be a gs:// URI"),
    (_replace(TYPICAL, "--output_dir"), "--output_dir is required"),
    (_replace(TYPICAL, "--sdk_container_image"), "--sdk_container_image is required: the prediction workers need PyTorch with CUDA"),
    (_replace(TYPICAL, "--sdk_container_image") + ["--no_gpu"], "the prediction workers need PyTorch, which"),
    (_replace(TYPICAL, "--bucket"), "--bucket BUCKET, or --temp_location"),
    (_replace(TYPICAL, "--job_name", "Predict_Job"), "invalid --job_name"),
    (TYPICAL + ["--gpu_count", "3"], "--gpu_count must be 1, 2, 4 or 8, got 3"),
    (TYPICAL + ["--gpu_count", "0"], "--gpu_count must be 1, 2, 4 or 8"),
    (TYPICAL + ["--gpu_type", "tesla-t4"], "invalid --gpu_type: tesla-t4"),
    (TYPICAL + ["--machine_type", "n1-standard-8"], "--gpu_type nvidia-l4 attaches only to G2 machine types (g2-...), not n1-standard-8"),
    (TYPICAL + ["--gpu_type", "nvidia-tesla-t4", "--machine_type", "g2-standard-4"], "attaches only to N1 machine types"),
    (TYPICAL + ["--gpu_type", "nvidia-b200"], "--gpu_type nvidia-b200: pass --machine_type too"),
    (TYPICAL + ["--mps", "--gpu_count", "2"], "--mps works only with one GPU per worker"),
    (TYPICAL + ["--mps", "--no_gpu"], "--mps shares a GPU: not with --no_gpu"),
    (TYPICAL + ["--worker_threads", "0"], "--worker_threads must be a positive integer"),
    (TYPICAL + ["--disk_size_gb", "10"], "--disk_size_gb must be an integer >= 30"),
    (TYPICAL + ["--max_workers", "-1"], "--max_workers must be a positive integer, got -1"),
    (TYPICAL + ["--tokenizer", "x"], "unknown argument: --tokenizer"),
    (TYPICAL + ["--", "--runner", "DirectRunner"], "--runner after --: use this script's own flag"),
    (TYPICAL + ["--", "--dataflow_service_options=worker_accelerator=type:nvidia-l4"], "--dataflow_service_options=worker_accelerator=type:nvidia-l4 after --"),
    (TYPICAL + ["--", "--number-of-worker-harness-threads", "4"], "use this script's own flag"),
    (TYPICAL + ["--", "--device", "cpu"], "the script sets --device (cuda on GPU workers, cpu with --no_gpu)"),
    (TYPICAL + ["--", "--input_files", "gs://my-bucket/c.tsv"], "--input_files after --"),
    (TYPICAL + ["--", "--dry-run"], "--dry-run after --, where it would go to the pipeline"),
    (TYPICAL + ["--region"], "--region needs a value"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_refusals(args, message):
    result = script("--dry-run", *args)  # (first: were a refusal missing, still nothing would run)
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert result.stderr.startswith("submit-predict: ") and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1


def test_help_and_script_hygiene():
    text = SCRIPT.read_text()
    assert os.access(SCRIPT, os.X_OK) and text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    result = script("--help")
    assert result.returncode == 0 and result.stdout.startswith("Usage: bin/submit-predict.sh")
    for flag in ("--project", "--region", "--model_dir", "--input_files", "--output_dir", "--sdk_container_image",
                 "--gpu_type", "--gpu_count", "--no_gpu", "--mps", "--machine_type", "--worker_threads", "--disk_size_gb",
                 "--max_workers", "--bucket", "--temp_location", "--staging_location", "--job_name", "--service_account",
                 "--network", "--subnetwork", "--no_wait", "--dry-run", "register-image.sh"):
        assert flag in result.stdout, flag


def test_without_credentials_says_so_in_one_line(tmp_path):
    env = {"HOME": str(tmp_path), "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "key.json")}
    result = script(*TYPICAL, env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"submit-predict: GOOGLE_APPLICATION_CREDENTIALS is {tmp_path / 'key.json'}, which does not exist\n"
    assert script(*TYPICAL, "--dry-run", env=env).returncode == 0  # the dry run needs none


# --------------------------------------------------------------------------- the container


def test_register_image_builds_the_predict_worker_target():
    result = script("--project", "my-proj", "--tag", "v1", "--target", "predict-worker",
                    "--base_image", "apache/beam_python3.11_sdk:2.77.0", "--dry-run", path=REPO_ROOT / "bin" / "register-image.sh")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line and not line.startswith("#")]
    uri = "us-central1-docker.pkg.dev/my-proj/spanwise/spanwise-predict-worker:v1"
    assert lines[2].split() == ["docker", "build", "--platform=linux/amd64", "--target=predict-worker", f"--tag={uri}",
                                "--build-arg=BEAM_SDK_IMAGE=apache/beam_python3.11_sdk:2.77.0", "."]
    assert lines[-1] == uri
    submit = script(*_replace(TYPICAL, "--sdk_container_image", uri), "--dry-run")  # what submit-predict.sh takes
    assert submit.returncode == 0 and flag_values(dry_run_words(submit.stdout)[3:])["--sdk_container_image"] == [uri]


def test_predict_worker_stage_is_beams_sdk_image_with_cuda_torch_and_our_packages():
    instructions = dockerfile_instructions((REPO_ROOT / "Dockerfile").read_text(encoding="utf-8"))
    stages = dockerfile_stages(instructions)
    assert list(stages)[-1] == "trainer"
    stage = stages["predict-worker"]
    assert stage[0] == ("FROM", "${BEAM_SDK_IMAGE} AS predict-worker")  # Beam and Python checked by test_cloud_scripts
    args = dict(rest.split("=", 1) for rest in _args(stages[""], "ARG") if "=" in rest)
    # the CUDA of the torch index is the trainer image's
    index = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)", args["TORCH_CUDA_INDEX"])
    image_cuda = re.search(r"-cuda(\d+)\.(\d+)-", args["TORCH_IMAGE"])
    assert index and image_cuda and index.group(1) == image_cuda.group(1) + image_cuda.group(2)
    assert ("ARG", "TORCH_CUDA_INDEX") in stage
    (entrypoint,) = _args(stage, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["/opt/apache/beam/boot"]
    copied = {source.rstrip("/") for rest in _args(stage, "COPY") for source in rest.split()[:-1]}
    assert copied == {"tokenization", "schemas", "spanwise_io", "corpora", "modeling", "beam_pipelines", "trainer", "setup.py",
                      "requirements.txt", "constraints.txt"}
    runs = _args(stage, "RUN")
    (torch_run,) = [r for r in runs if "TORCH_CUDA_INDEX" in r]
    assert '--index-url "${TORCH_CUDA_INDEX}" "torch==${want}"' in torch_run and "requirements.txt" in torch_run
    assert "torch.version.cuda" in torch_run and "torch.__version__" in torch_run
    assert _requirement_pin("torch")  # (the version the build reads)
    (project,) = [r for r in runs if "pip install --no-build-isolation" in r]
    words = next(part for part in project.split(";") if "pip install" in part).split()
    assert words[-1] == "." and "-r" not in words
    assert [words[i + 1] for i, w in enumerate(words) if w == "-c"] == ["constraints.txt", "/tmp/torch-from-image.txt"]
    assert "apache_beam.__version__" in project and "torch.version.cuda" in project and "beam_pipelines.predict" in project
    # torch's layer comes before the code's
    assert stage.index(("RUN", torch_run)) < stage.index(("COPY", "trainer/ trainer/"))


# --------------------------------------------------------------------------- a model, in the bucket


@pytest.fixture(scope="module")
def model(prep, tiny_model, tmp_path_factory) -> str:  # noqa: F811
    """One tiny model (head), 1 epoch; only its top-level files (what a model folder holds)."""
    directory = tmp_path_factory.mktemp("model_head") / "model"
    train_in_process(task_argv(prep["data_dir"], tiny_model, directory, "--seq_len_func", "head",
                               "--num_train_epochs", "1", "--learning_rate", "1e-2"))
    clean = tmp_path_factory.mktemp("model_files") / "model"
    clean.mkdir()
    for entry in directory.iterdir():
        if entry.is_file():
            shutil.copy(entry, clean / entry.name)
    return str(clean)


def _documents(prep: dict[str, Any]) -> bytes:  # noqa: F811
    """JSON Lines: the topic corpus's test split (some documents of 300-2,000 words), then bad rows."""
    lines = [json.dumps({"id": doc_id, "text": text, "label": label}).encode() for doc_id, _, label, text in prep["rows"]["test"]]
    lines += [
        json.dumps({"id": "empty", "text": "", "label": "tech"}).encode(),
        b'{"id": "latin1", "text": "caf\xe9 bread"}',
        json.dumps({"id": "nobody", "body": "no text key"}).encode(),
    ]
    return b"\n".join(lines) + b"\n"


@pytest.fixture
def in_bucket(gcs: GcsEmulator, model: str, prep) -> dict[str, str]:  # noqa: F811
    spanwise_io.upload_dir(model, gcs.url("models", "head"))
    spanwise_io.write_bytes(gcs.url("docs", "test.jsonl"), _documents(prep))
    return {"model_dir": gcs.url("models", "head"), "input": gcs.url("docs", "test.jsonl"), "output_dir": gcs.url("predictions")}


# --------------------------------------------------------------------------- (b) real submission, offline


def _find(obj: Any, cls: type, depth: int = 4) -> Any:
    """The first ``cls`` instance in ``obj``'s attributes (depth-first), or None."""
    if isinstance(obj, cls):
        return obj
    if depth and hasattr(obj, "__dict__"):
        for value in vars(obj).values():
            found = _find(value, cls, depth - 1)
            if found is not None:
                return found
    return None


def _do_fns(by_name: dict[str, Any], prefix: str) -> list[Any]:
    from apache_beam.internal import pickler
    from apache_beam.portability.api import beam_runner_api_pb2

    out = []
    for name, transform in by_name.items():
        if (name == prefix or name.startswith(prefix + "/")) and transform.spec.urn == "beam:transform:pardo:v1":
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            out.append(pickler.loads(payload.do_fn.payload)[0])
    return out


def _workers_write_summary(output_dir: str):
    def on_create(job: dict[str, Any]) -> None:
        """What the job's Finalize step would leave in --output_dir (run() reads it after the job)."""
        spanwise_io.write_bytes(spanwise_io.join(output_dir, "summary.json"), json.dumps({
            "written_by_job": job["id"], "output_dir": output_dir, "read": 33, "documents": 30, "rejected": 3,
            "rejected_by_reason": {"empty_text_a": 1, "invalid_utf8": 1, "missing_field": 1}, "accuracy": 0.5,
        }).encode())
    return on_create


def test_predict_run_submits_the_gpu_job_to_dataflow(gcs, in_bucket, fast_polling, monkeypatch, caplog):  # noqa: F811
    """The command the script prints, run by predict.run against the fake service."""
    from apache_beam.portability.api import beam_runner_api_pb2

    from beam_pipelines import predict
    from beam_pipelines.inference import ViewModelHandler, ViewsFn

    monkeypatch.chdir(REPO_ROOT)
    dry = script("--project", "test-project", "--temp_location", gcs.url("tmp"), "--staging_location", gcs.url("staging"),
                 "--model_dir", in_bucket["model_dir"], "--input_files", in_bucket["input"],
                 "--output_dir", in_bucket["output_dir"], "--sdk_container_image", CUSTOM_IMAGE,
                 "--job_name", "spanwise-predict-test", "--max_workers", "2", "--dry-run", "--", "--batch_size", "16")
    assert dry.returncode == 0, dry.stderr
    with FakeDataflow(
        create_state="JOB_STATE_PENDING", states=["JOB_STATE_RUNNING", "JOB_STATE_DONE"],
        on_create=_workers_write_summary(in_bucket["output_dir"]),
    ) as fake:
        started = time.monotonic()
        summary = predict.run(dry_run_words(dry.stdout)[3:] + ["--dataflow_endpoint", fake.url, "--no_auth"])
        elapsed = time.monotonic() - started
    assert fake.unhandled == [] and fake.calls()[0] == "POST _create_job" and fake.calls()[-1] == "GET _get_job"
    (job,) = fake.jobs.values()
    assert job["currentState"] == "JOB_STATE_DONE" and elapsed < 60, elapsed
    assert summary["written_by_job"] == job["id"] and summary["documents"] == 30  # what the "workers" wrote
    assert f"Job {job['id']} is in state JOB_STATE_DONE" in caplog.text  # its states while waiting (Beam's own line)

    (request,) = fake.created_jobs
    assert request["name"] == "spanwise-predict-test" and request["type"] in (1, "JOB_TYPE_BATCH")
    env = request["environment"]
    assert env["serviceOptions"] == [L4]  # the GPUs and their driver
    assert "use_runner_v2" in env["experiments"]
    options = env["sdkPipelineOptions"]["options"]
    assert options["dataflow_service_options"] == [L4] and options["no_auth"] is True
    assert options["sdk_container_image"] == CUSTOM_IMAGE and options.get("setup_file") is None
    (pool,) = env["workerPools"]
    assert pool["machineType"] == "g2-standard-4" and pool["autoscalingSettings"]["maxNumWorkers"] == 2
    assert pool["numThreadsPerWorker"] == 1 and pool["diskSizeGb"] == 50
    assert pool["workerHarnessContainerImage"] == CUSTOM_IMAGE
    assert [c["containerImage"] for c in pool["sdkHarnessContainerImages"]] == [CUSTOM_IMAGE]

    # the staged pipeline: our transforms, in that container, the model read from gs:// on the GPU
    staging_url = options["staging_location"]
    staged = _staged(staging_url.replace("gs://", "storage.googleapis.com/"))
    assert set(staged) == {p["name"] for p in pool["packages"]} | {"pipeline.pb"}
    assert "workflow.tar.gz" not in staged
    pipeline, by_name = _transforms(staged["pipeline.pb"])
    assert set(OUR_TRANSFORMS) <= set(by_name), sorted(set(OUR_TRANSFORMS) - set(by_name))
    assert not [name for name in by_name if name.endswith("/Spill")]
    (views,) = _do_fns(by_name, "Views")
    assert isinstance(views, ViewsFn) and views._model_dir == in_bucket["model_dir"]
    handlers = [h for h in (_find(fn, ViewModelHandler) for fn in _do_fns(by_name, "RunInference")) if h is not None]
    assert handlers, "no ViewModelHandler in RunInference"
    assert {(h._model_dir, h._device_name) for h in handlers} == {(in_bucket["model_dir"], "cuda")}
    assert handlers[0].batch_elements_kwargs()["max_batch_size"] == 16
    (finalize,) = _do_fns(by_name, "Finalize")
    assert finalize._output_dir == in_bucket["output_dir"] and finalize._base["runner"] == "DataflowRunner"
    environment = pipeline.components.environments[by_name["Views/ParDo(ViewsFn)"].environment_id]
    assert beam_runner_api_pb2.DockerPayload.FromString(environment.payload).container_image == CUSTOM_IMAGE


def test_no_wait_returns_the_job_id_at_once(gcs, in_bucket, fast_polling, capsys):  # noqa: F811
    from beam_pipelines import predict

    argv = ["--model_dir", in_bucket["model_dir"], "--input_files", in_bucket["input"], "--output_dir", in_bucket["output_dir"],
            "--runner", "DataflowRunner", "--project", "test-project", "--region", "us-central1",
            "--temp_location", gcs.url("tmp"), "--sdk_container_image", CUSTOM_IMAGE, "--no_auth",
            "--dataflow_service_options", L4, "--job_name", "spanwise-predict-nowait", "--no_wait_until_finish"]
    with FakeDataflow(create_state="JOB_STATE_PENDING", states=["JOB_STATE_RUNNING"]) as fake:
        assert predict.main(argv + ["--dataflow_endpoint", fake.url]) == 0
    (job,) = fake.jobs.values()
    assert f"submitted prediction job {job['id']} (state " in capsys.readouterr().out
    assert "GET _list_messages" not in fake.calls()
    assert not spanwise_io.exists(spanwise_io.join(in_bucket["output_dir"], "summary.json"))


def test_script_submits_to_dataflow(gcs, in_bucket):
    """bin/submit-predict.sh for real (not --dry-run), with the endpoint and --no_auth passed through."""
    with FakeDataflow(create_state="JOB_STATE_DONE", on_create=_workers_write_summary(in_bucket["output_dir"])) as fake:
        args = [
            "--project", "test-project", "--bucket", BUCKET, "--job_name", "spanwise-predict-script",
            "--model_dir", in_bucket["model_dir"], "--input_files", in_bucket["input"], "--output_dir", in_bucket["output_dir"],
            "--sdk_container_image", CUSTOM_IMAGE, "--gpu_type", "nvidia-tesla-t4",
            "--", "--dataflow_endpoint", fake.url, "--no_auth",
        ]
        dry = script("--dry-run", *args)
        result = script(*args, env={"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    ran = [line for line in result.stderr.splitlines() if line.startswith(("+ ", "  --"))]
    assert dry_run_words("\n".join(ran)[2:]) == dry_run_words(dry.stdout)  # it ran what --dry-run printed
    assert result.stdout.splitlines() == [  # the summary's readable lines
        "read 33 documents: 30 predicted, 3 rejected (empty_text_a 1, invalid_utf8 1, missing_field 1)",
        "accuracy 0.5000", f"summary: {in_bucket['output_dir']}/summary.json"]
    (job,) = fake.jobs.values()
    assert (f"submitted DataflowRunner job {job['id']}; waiting for it to finish. Follow it at "
            f"https://console.cloud.google.com/dataflow/jobs/") in result.stderr
    assert fake.unhandled == [] and fake.calls() == ["POST _create_job"]
    (request,) = fake.created_jobs
    assert request["environment"]["serviceOptions"] == ["worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"]
    (pool,) = request["environment"]["workerPools"]
    assert pool["machineType"] == "n1-standard-4" and pool["autoscalingSettings"]["maxNumWorkers"] == 4
    options = request["environment"]["sdkPipelineOptions"]["options"]
    assert options["staging_location"].startswith(f"gs://{BUCKET}/dataflow/staging/spanwise-predict-script.")
    assert spanwise_io.exists(options["pipelineUrl"])


# --------------------------------------------------------------------------- (c) the pipeline over gs://


def _outputs(output_dir: str) -> dict[str, Any]:
    """Predictions by id, rejected rows (file named by its base name) and the summary of one run."""
    names = spanwise_io.listdir(output_dir)
    predictions: dict[str, dict[str, Any]] = {}
    for name in names:
        if name.startswith("predictions-"):
            for line in spanwise_io.read_bytes(spanwise_io.join(output_dir, name)).decode().splitlines():
                row = json.loads(line)
                predictions[row["id"]] = row
    rejected_dir = spanwise_io.join(output_dir, "rejected")
    rejected = []
    for name in spanwise_io.listdir(rejected_dir):
        for line in spanwise_io.read_bytes(spanwise_io.join(rejected_dir, name)).decode().splitlines():
            row = json.loads(line)
            row["file"] = row["file"].rsplit("/", 1)[-1]
            rejected.append(row)
    summary = json.loads(spanwise_io.read_bytes(spanwise_io.join(output_dir, "summary.json")))
    return {"names": sorted(names), "rejected_names": spanwise_io.listdir(rejected_dir), "predictions": predictions,
            "rejected": sorted(rejected, key=lambda r: r["line"]), "summary": summary}


def test_pipeline_reads_and_writes_gcs_as_it_does_local_paths(gcs, in_bucket, model, tmp_path):
    from beam_pipelines import predict

    flags = ["--eval_views", "chunks", "--batch_size", "8", "--num_shards", "2"]
    remote = predict.run(["--model_dir", in_bucket["model_dir"], "--input_files", in_bucket["input"],
                          "--output_dir", in_bucket["output_dir"], *flags])
    local_input = tmp_path / "docs" / "test.jsonl"
    local_input.parent.mkdir()
    local_input.write_bytes(spanwise_io.read_bytes(in_bucket["input"]))
    local = predict.run(["--model_dir", model, "--input_files", str(local_input), "--output_dir", str(tmp_path / "out"), *flags])

    got, expected = _outputs(in_bucket["output_dir"]), _outputs(str(tmp_path / "out"))
    assert got["names"] == expected["names"] == [
        "predictions-00000-of-00002.jsonl", "predictions-00001-of-00002.jsonl", "rejected", "summary.json"]
    assert got["rejected_names"] == expected["rejected_names"] == ["input-00000-of-00002.jsonl", "input-00001-of-00002.jsonl"]
    assert len(got["predictions"]) == 30 and set(got["predictions"]) == set(expected["predictions"])
    for doc_id, row in expected["predictions"].items():
        other = got["predictions"][doc_id]
        assert (other["label"], other["views"]) == (row["label"], row["views"]), doc_id
        names = sorted(row["probabilities"])
        np.testing.assert_allclose([other["probabilities"][n] for n in names], [row["probabilities"][n] for n in names],
                                   atol=2e-5, err_msg=doc_id)
    assert max(row["views"] for row in got["predictions"].values()) > 1  # long documents, several chunks
    assert [(r["line"], r["reason"], r["file"]) for r in got["rejected"]] == [
        (31, "empty_text_a", "test.jsonl"), (32, "invalid_utf8", "test.jsonl"), (33, "missing_field", "test.jsonl")]
    assert got["rejected"] == expected["rejected"]

    # the summary: the same counts and metrics; the paths are each run's own
    assert remote == got["summary"] and local == expected["summary"]
    paths = ("model_dir", "input_files", "output_dir", "files")
    assert {k: v for k, v in remote.items() if k not in paths} == {k: v for k, v in local.items() if k not in paths}
    assert remote["read"] == 33 and remote["documents"] == 30 and remote["rejected"] == 3
    assert remote["model_dir"] == in_bucket["model_dir"] and remote["input_files"] == [in_bucket["input"]]
    assert remote["files"]["predictions"] == [spanwise_io.join(in_bucket["output_dir"], n) for n in got["names"][:2]]
    assert all(path.startswith(f"gs://{BUCKET}/predictions/rejected/") for path in remote["files"]["rejected"])
    assert remote["runner"] == "FnApiRunner"
