"""Preprocessing on Dataflow, tested offline (design.md sections 6-7).

* ``bin/submit-dataflow.sh --dry-run``: the exact ``python -m beam_pipelines.preprocess`` command
  (runner, project, region, temp/staging locations, workers, how the project reaches the workers,
  pass-through flags) and the refusals.
* The real DataflowRunner submission, with no network and no credentials: Beam's
  ``--dataflow_endpoint`` points at a fake Dataflow REST API (``fake_dataflow.py``) and the
  temp/staging locations at the GCS emulator (``gcs_emulator.py``). Beam builds the sdist of
  ``./setup.py``, stages it and ``pipeline.pb`` to the bucket and sends the job-creation request,
  which the tests read back: job name, worker pool (container image, packages, machine type,
  autoscaling), pipeline options, and our transforms in the staged pipeline.

``preprocess.run`` waits for the job and then reads the manifest the job wrote. The fake therefore
plays the part of the service and its workers: the job goes PENDING -> RUNNING -> DONE, and when
it is created a manifest appears in ``--output_dir``. With ``--no_wait_until_finish`` the command
returns once the job is created (job id and console URL printed); a job that fails is an error
naming the job.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import types
from pathlib import Path
from typing import Any

import pytest

import spanwise_io
from fake_dataflow import FakeDataflow
from gcs_emulator import GcsEmulator, gcs_emulator_fixtures

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "bin" / "submit-dataflow.sh"
BUCKET = "spanwise-dataflow-test"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")
# Our PTransform labels (beam_pipelines/preprocess.py build_pipeline).
OUR_TRANSFORMS = (
    "ListTasks", "SpreadTasks", "Read", "TrainLabels", "DistinctLabels", "AllLabels", "BuildLabelMap", "Tokenize",
    "GroupByShard", "WriteShards", "LengthStats", "AllRejected", "BatchRejected", "GroupRejected", "WriteRejected",
    "FinalizeTrigger", "Finalize",
    # on Dataflow, records and rejected rows meet through the runner's shuffle, not spill files
    "GroupByShard/Group", "GroupRejected/Group",
)
BEAM_IMAGE = "gcr.io/cloud-dataflow/v1beta3/beam_python{}.{}_sdk:{}"
CUSTOM_IMAGE = "us-central1-docker.pkg.dev/test-project/spanwise/spanwise-worker:0123456789ab"

dataflow_gcs_server, gcs = gcs_emulator_fixtures(bucket=BUCKET, server_name="dataflow_gcs_server", name="gcs")


# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    """The gs:// tokenizer is copied to ~/.cache/spanwise: keep that in the test's own folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def no_build_leftovers():
    """Beam builds the sdist with ``python setup.py sdist`` in the repository root, which leaves
    ``spanwise.egg-info`` there (ignored by git and Docker); remove it when the test made it."""
    egg_info = REPO_ROOT / "spanwise.egg-info"
    existed = egg_info.exists()
    yield
    if not existed:
        shutil.rmtree(egg_info, ignore_errors=True)


def script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_CLOUD_PROJECT", "PYTHON")}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env={**base, **(env or {})}, timeout=120
    )


def dry_run_words(stdout: str) -> list[str]:
    """The printed command as argv (comment lines dropped, continuations joined, shell-unquoted)."""
    text = "\n".join(line for line in stdout.splitlines() if not line.startswith("#"))
    return shlex.split(text.replace("\\\n", " "))  # (shlex knows no line continuations)


def flag_values(words: list[str]) -> dict[str, list[str]]:
    """``{"--flag": [values...]}`` (each flag once) from an argv after ``python -m module``."""
    values: dict[str, list[str]] = {}
    current = None
    for word in words:
        if word.startswith("--"):
            assert word not in values, f"{word} given twice"
            current = values[word] = []
        else:
            assert current is not None, f"{word!r} before any flag"
            current.append(word)
    return values


TYPICAL = [
    "--project", "my-proj", "--region", "europe-west4", "--bucket", "my-bucket",
    "--data_dir", "gs://my-bucket/corpus/bbc", "--output_dir", "gs://my-bucket/prep/bbc",
    "--tokenizer", "bert-base-uncased", "--job_name", "spanwise-preprocess-bbc",
]
PASS_THROUGH = ["--seq_len_func", "ht", "--seq_func_params", "128", "382", "--max_seq_length", "512", "--labels", "team=nlp ops"]


# --------------------------------------------------------------------------- (a) the script's dry run


def test_dry_run_prints_the_exact_command_one_flag_per_line():
    result = script(*TYPICAL, "--dry-run", "--", *PASS_THROUGH, env={"PYTHON": "/nonexistent/python"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# dry run: nothing is executed") and str(REPO_ROOT) in lines[0]
    assert lines[1] == "/nonexistent/python -m beam_pipelines.preprocess \\"
    assert all(line.startswith("  --") for line in lines[2:]), lines  # one flag (and its values) per line
    assert all(line.endswith(" \\") for line in lines[1:-1]) and not lines[-1].endswith("\\")
    assert "  --labels 'team=nlp ops'" in lines  # shell-quoted
    words = dry_run_words(result.stdout)
    assert words == [
        "/nonexistent/python", "-m", "beam_pipelines.preprocess",
        "--runner", "DataflowRunner",
        "--project", "my-proj",
        "--region", "europe-west4",
        "--job_name", "spanwise-preprocess-bbc",
        "--data_dir", "gs://my-bucket/corpus/bbc",
        "--output_dir", "gs://my-bucket/prep/bbc",
        "--tokenizer", "bert-base-uncased",
        "--temp_location", "gs://my-bucket/dataflow/tmp",
        "--staging_location", "gs://my-bucket/dataflow/staging",
        "--worker_machine_type", "n1-standard-4",
        "--max_num_workers", "10",
        "--setup_file", "./setup.py",
        *PASS_THROUGH,
    ]
    assert result.stderr == ""


def test_dry_run_options_defaults_and_spellings():
    result = script(
        "--project=my-proj", "--temp-location", "gs://my-bucket/df/tmp/", "--data-dir=gs://my-bucket/corpus",
        "--output_dir", "gs://my-bucket/prep", "--tokenizer", "gs://my-bucket/tokenizers/minilm",
        "--machine-type", "n2-highmem-8", "--max_workers=32", "--service_account", "prep@my-proj.iam.gserviceaccount.com",
        "--network", "vpc-1", "--subnetwork", "regions/us-central1/subnetworks/sub-1", "--dry_run",
    )
    assert result.returncode == 0, result.stderr
    words = dry_run_words(result.stdout)
    assert words[:3] == [".venv/bin/python", "-m", "beam_pipelines.preprocess"]
    flags = flag_values(words[3:])
    assert flags["--region"] == ["us-central1"]
    assert flags["--temp_location"] == ["gs://my-bucket/df/tmp"]
    assert flags["--staging_location"] == ["gs://my-bucket/df/staging"]  # beside the temp location
    assert flags["--worker_machine_type"] == ["n2-highmem-8"] and flags["--max_num_workers"] == ["32"]
    assert flags["--tokenizer"] == ["gs://my-bucket/tokenizers/minilm"]
    assert flags["--service_account_email"] == ["prep@my-proj.iam.gserviceaccount.com"]
    assert flags["--network"] == ["vpc-1"] and flags["--subnetwork"] == ["regions/us-central1/subnetworks/sub-1"]
    assert re.fullmatch(r"spanwise-preprocess-\d{8}-\d{6}", flags["--job_name"][0])
    assert flags["--setup_file"] == ["./setup.py"]


def test_dry_run_no_wait_adds_beams_flag():
    result = script(*TYPICAL, "--no-wait", "--dry-run")
    assert result.returncode == 0, result.stderr
    words = dry_run_words(result.stdout)
    assert words[-1] == "--no_wait_until_finish" and words.count("--no_wait_until_finish") == 1
    assert "--no_wait_until_finish" not in dry_run_words(script(*TYPICAL, "--dry-run").stdout)


def test_dry_run_with_a_custom_sdk_container_stages_no_setup_file():
    result = script(*TYPICAL, "--sdk_container_image", CUSTOM_IMAGE, "--dry-run")
    assert result.returncode == 0, result.stderr
    flags = flag_values(dry_run_words(result.stdout)[3:])
    assert flags["--sdk_container_image"] == [CUSTOM_IMAGE]
    assert "--setup_file" not in flags


def test_project_comes_from_the_environment_or_is_required():
    args = [a for a in TYPICAL if a not in ("--project", "my-proj")]
    result = script(*args, "--dry-run", env={"GOOGLE_CLOUD_PROJECT": "env-project"})
    assert result.returncode == 0, result.stderr
    assert flag_values(dry_run_words(result.stdout)[3:])["--project"] == ["env-project"]
    result = script(*args, "--dry-run")
    assert result.returncode == 2 and result.stdout == ""
    assert "--project is required" in result.stderr and "GOOGLE_CLOUD_PROJECT" in result.stderr


def _replace(args: list[str], flag: str, value: str | None) -> list[str]:
    out = list(args)
    i = out.index(flag)
    if value is None:
        del out[i : i + 2]
    else:
        out[i + 1] = value
    return out


@pytest.mark.parametrize(
    "args, message",
    [
        (_replace(TYPICAL, "--tokenizer", str(REPO_ROOT)), "local path, which the Dataflow workers cannot read"),
        (_replace(TYPICAL, "--tokenizer", "./my-tokenizer"), "local path"),
        (_replace(TYPICAL, "--data_dir", "/data/corpus"), "--data_dir must be a gs:// URI"),
        (_replace(TYPICAL, "--output_dir", None), "--output_dir is required"),
        (_replace(TYPICAL, "--bucket", None), "--bucket BUCKET, or --temp_location"),
        (_replace(TYPICAL, "--job_name", "Spanwise_Job"), "invalid --job_name"),
        (TYPICAL + ["--max_workers", "0"], "--max_workers must be a positive integer"),
        (TYPICAL + ["--temp_location", "/tmp/x"], "--temp_location must be a gs:// URI"),
        (TYPICAL + ["--num_workers", "3"], "unknown argument: --num_workers"),
        (TYPICAL + ["--", "--runner", "DirectRunner"], "--runner after --: use this script's own flag"),
        (TYPICAL + ["--", "--setup_file=other/setup.py"], "--setup_file=other/setup.py after --"),
        (TYPICAL + ["--region"], "--region needs a value"),
        (TYPICAL + ["--", "--dry-run"], "--dry-run after --, where it would go to the pipeline"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_refusals(args, message):
    result = script("--dry-run", *args)  # (first: were a refusal missing, still nothing would run)
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert result.stderr.startswith("submit-dataflow: ") and message in result.stderr, result.stderr


def test_help():
    result = script("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: bin/submit-dataflow.sh")
    for flag in ("--project", "--region", "--bucket", "--temp_location", "--staging_location", "--machine_type",
                 "--max_workers", "--job_name", "--sdk_container_image", "--service_account", "--network",
                 "--subnetwork", "--dry-run"):
        assert flag in result.stdout


# --------------------------------------------------------------------------- (b) real submission, offline


@pytest.fixture
def corpus(gcs: GcsEmulator, minilm_path: str) -> dict[str, str]:
    """Small train/dev TSVs and the MiniLM tokenizer in the emulator's bucket."""
    train = "id\talpha\tlabel\ttext_a\nt1\ta\tsports\tThe match ended late.\nt2\tb\ttech\tA new chip.\nt3\tc\tsports\tShe won.\n"
    dev = "d1\tx\ttech\tQuantum computers.\nd2\ty\tsports\tA long season.\n"
    spanwise_io.write_bytes(gcs.url("corpus", "train.tsv"), train.encode())
    spanwise_io.write_bytes(gcs.url("corpus", "dev.tsv"), dev.encode())
    for name in TOKENIZER_FILES:
        local = os.path.join(minilm_path, name)
        if os.path.isfile(local):
            with open(local, "rb") as handle:
                spanwise_io.write_bytes(gcs.url("tokenizer", name), handle.read())
    return {"data_dir": gcs.url("corpus"), "output_dir": gcs.url("prep"), "tokenizer": gcs.url("tokenizer")}


def _workers_write_manifest(job: dict[str, Any]) -> None:
    """What the job's Finalize step would leave in --output_dir (run() reads it after the job)."""
    from schemas.manifest import SCHEMA_VERSION, write_manifest

    options = job["environment"]["sdkPipelineOptions"]["options"]

    def split(rows: int) -> dict[str, Any]:
        return {"read": rows, "records": rows, "rejected": 0, "files": [{"name": "x-00000-of-00001.parquet", "rows": rows}]}

    write_manifest(options["output_dir"], {
        "schema_version": SCHEMA_VERSION, "tokenizer": {"name_or_path": options["tokenizer"]},
        "label_map": {"sports": 0, "tech": 1}, "splits": {"train": split(3), "dev": split(2)},
        "max_doc_tokens": int(options["max_doc_tokens"]),  # (numbers come back as floats in the job's options)
        "options": {"output_dir": options["output_dir"], "job_id": job["id"]},
    })


@pytest.fixture
def fake_dataflow():
    with FakeDataflow(
        create_state="JOB_STATE_PENDING",
        states=["JOB_STATE_RUNNING", "JOB_STATE_RUNNING", "JOB_STATE_DONE"],
        messages=[{"time": "2026-01-01T00:00:01Z", "messageImportance": "JOB_MESSAGE_BASIC", "messageText": "Workers started."}],
        on_create=_workers_write_manifest,
    ) as fake:
        yield fake


@pytest.fixture
def fast_polling(monkeypatch):
    """Beam polls the job every 5 s (and its waiting thread sleeps 5 s): make that 10 ms here."""
    from apache_beam.runners.dataflow import dataflow_runner

    real = dataflow_runner.time
    shim = types.SimpleNamespace(**{name: getattr(real, name) for name in dir(real) if not name.startswith("__")})
    shim.sleep = lambda seconds: real.sleep(min(seconds, 0.01))
    monkeypatch.setattr(dataflow_runner, "time", shim)


def _staged(staging_prefix: str) -> dict[str, bytes]:
    """``{name: bytes}`` of the files staged for the job (``storage.googleapis.com/B/...`` prefix)."""
    assert staging_prefix.startswith("storage.googleapis.com/")
    url = "gs://" + staging_prefix[len("storage.googleapis.com/"):]
    return {name: spanwise_io.read_bytes(spanwise_io.join(url, name)) for name in spanwise_io.listdir(url)}


def _transforms(pipeline_pb: bytes):
    from apache_beam.portability.api import beam_runner_api_pb2

    pipeline = beam_runner_api_pb2.Pipeline.FromString(pipeline_pb)
    return pipeline, {t.unique_name: t for t in pipeline.components.transforms.values()}


@pytest.mark.parametrize("staging", ["setup_file", "container"])
def test_preprocess_run_submits_the_job_to_dataflow(
    staging, gcs, corpus, fake_dataflow, fast_polling, no_build_leftovers, monkeypatch
):
    from apache_beam.internal import pickler
    from apache_beam.portability.api import beam_runner_api_pb2
    from apache_beam.version import __version__ as beam_version

    from beam_pipelines import preprocess, transforms

    monkeypatch.chdir(REPO_ROOT)  # --setup_file ./setup.py, as bin/submit-dataflow.sh runs it
    argv = [
        "--data_dir", corpus["data_dir"], "--output_dir", corpus["output_dir"], "--tokenizer", corpus["tokenizer"],
        "--runner", "DataflowRunner", "--project", "test-project", "--region", "us-central1",
        "--temp_location", gcs.url("tmp"), "--staging_location", gcs.url("staging"),
        "--dataflow_endpoint", fake_dataflow.url, "--no_auth", "--job_name", "spanwise-test",
        "--worker_machine_type", "n1-standard-4", "--max_num_workers", "3",
        "--seq_len_func", "head", "--max_seq_length", "128",
    ]
    argv += ["--setup_file", "./setup.py"] if staging == "setup_file" else ["--sdk_container_image", CUSTOM_IMAGE]
    started = time.monotonic()
    manifest = preprocess.run(argv)
    elapsed = time.monotonic() - started

    # The service saw: the job created, then polled (state and messages) until DONE. Nothing else.
    assert fake_dataflow.unhandled == []
    calls = fake_dataflow.calls()
    assert calls[0] == "POST _create_job" and calls[-1] == "GET _get_job"
    assert "GET _list_messages" in calls
    (job,) = fake_dataflow.jobs.values()
    assert job["currentState"] == "JOB_STATE_DONE"
    assert elapsed < 30, elapsed  # no 5 s polls, no credential retries
    # run() returned the manifest the "workers" wrote (see the module docstring).
    assert manifest["options"]["job_id"] == job["id"]

    # The job-creation request.
    (request,) = fake_dataflow.created_jobs
    assert request["name"] == "spanwise-test"
    assert request["type"] in (1, "JOB_TYPE_BATCH")
    assert request["clientRequestId"]
    env = request["environment"]
    assert {"use_runner_v2", "use_portable_job_submission"} <= set(env["experiments"])
    assert re.fullmatch(rf"storage\.googleapis\.com/{BUCKET}/tmp/spanwise-test\.\d+\.\d+", env["tempStoragePrefix"])
    options = env["sdkPipelineOptions"]["options"]
    for key, value in {
        "runner": "DataflowRunner", "project": "test-project", "region": "us-central1", "job_name": "spanwise-test",
        "data_dir": corpus["data_dir"], "output_dir": corpus["output_dir"], "tokenizer": corpus["tokenizer"],
        "seq_len_func": "head", "no_auth": True,
    }.items():
        assert options[key] == value, key
    staging_url = options["staging_location"]
    assert re.fullmatch(rf"gs://{BUCKET}/staging/spanwise-test\.\d+\.\d+", staging_url)
    assert options["pipelineUrl"] == f"{staging_url}/pipeline.pb"

    (pool,) = env["workerPools"]
    assert pool["machineType"] == "n1-standard-4"
    assert pool["autoscalingSettings"]["maxNumWorkers"] == 3
    image = CUSTOM_IMAGE if staging == "container" else BEAM_IMAGE.format(*sys.version_info[:2], beam_version)
    assert pool["workerHarnessContainerImage"] == image
    assert [c["containerImage"] for c in pool["sdkHarnessContainerImages"]] == [image]
    staging_prefix = staging_url.replace("gs://", "storage.googleapis.com/")
    packages = {p["name"]: p["location"] for p in pool["packages"]}
    assert all(location == f"{staging_prefix}/{name}" for name, location in packages.items())

    # What was staged to the bucket: pipeline.pb (the hash in the request) and the packages.
    staged = _staged(staging_prefix)
    assert set(staged) == set(packages) | {"pipeline.pb"}
    assert options["pipelineProtoHash"] == hashlib.sha256(staged["pipeline.pb"]).hexdigest()
    if staging == "setup_file":
        assert options["setup_file"] == "./setup.py"
        assert "workflow.tar.gz" in packages
        with tarfile.open(fileobj=io.BytesIO(staged["workflow.tar.gz"]), mode="r:gz") as sdist:
            names = set(sdist.getnames())
        for module in ("setup.py", "beam_pipelines/preprocess.py", "beam_pipelines/transforms.py", "beam_pipelines/sinks.py",
                       "tokenization/tokenizer.py", "schemas/manifest.py", "spanwise_io/__init__.py"):
            assert f"spanwise-0.1.0/{module}" in names, module
        # the project's packages only: no virtualenv, outputs, data or benchmarks (setuptools adds tests/test_*.py)
        assert not [n for n in names if (n.split("/") + [""])[1] in (".venv", ".git", "out", "data", "bench", "docs")]
        assert len(staged["workflow.tar.gz"]) < 1_000_000
    else:
        assert options.get("setup_file") is None and options["sdk_container_image"] == CUSTOM_IMAGE
        assert "workflow.tar.gz" not in packages

    # Our transforms, in the staged pipeline, running in the SDK container the request names.
    pipeline, by_name = _transforms(staged["pipeline.pb"])
    assert set(OUR_TRANSFORMS) <= set(by_name), sorted(set(OUR_TRANSFORMS) - set(by_name))
    assert not [name for name in by_name if name.endswith("/Spill")]
    tokenize = by_name["Tokenize/ParDo(TokenizeFn)"]
    assert tokenize.spec.urn == "beam:transform:pardo:v1"
    do_fn = pickler.loads(beam_runner_api_pb2.ParDoPayload.FromString(tokenize.spec.payload).do_fn.payload)[0]
    assert isinstance(do_fn, transforms.TokenizeFn)
    environment = pipeline.components.environments[tokenize.environment_id]
    docker = beam_runner_api_pb2.DockerPayload.FromString(environment.payload)
    assert docker.container_image == image
    artifacts = {
        beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(dep.role_payload).staged_name:
            beam_runner_api_pb2.ArtifactUrlPayload.FromString(dep.type_payload).url
        for dep in environment.dependencies
    }
    assert artifacts == {name: f"{staging_url}/{name}" for name in packages}


def test_script_submits_to_dataflow(gcs, corpus, no_build_leftovers):
    """bin/submit-dataflow.sh for real (not --dry-run), with the endpoint and --no_auth passed through."""
    with FakeDataflow(create_state="JOB_STATE_DONE", on_create=_workers_write_manifest) as fake:
        args = [
            "--project", "test-project", "--bucket", BUCKET, "--job_name", "spanwise-script-test",
            "--data_dir", corpus["data_dir"], "--output_dir", corpus["output_dir"], "--tokenizer", corpus["tokenizer"],
            "--", "--dataflow_endpoint", fake.url, "--no_auth",
        ]
        dry = script("--dry-run", *args)
        result = script(*args, env={"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    # It ran exactly the command that --dry-run printed.
    ran = [line for line in result.stderr.splitlines() if line.startswith(("+ ", "  --"))]
    assert dry_run_words("\n".join(ran)[2:]) == dry_run_words(dry.stdout)
    assert f"wrote {corpus['output_dir']}/manifest.json" in result.stdout
    assert fake.unhandled == [] and fake.calls() == ["POST _create_job"]
    (request,) = fake.created_jobs
    assert request["name"] == "spanwise-script-test"
    (pool,) = request["environment"]["workerPools"]
    assert pool["machineType"] == "n1-standard-4" and pool["autoscalingSettings"]["maxNumWorkers"] == 10
    assert [p["name"] for p in pool["packages"]][0] == "workflow.tar.gz"
    options = request["environment"]["sdkPipelineOptions"]["options"]
    assert options["setup_file"] == "./setup.py" and options["region"] == "us-central1"
    assert options["staging_location"].startswith(f"gs://{BUCKET}/dataflow/staging/spanwise-script-test.")
    assert options["temp_location"].startswith(f"gs://{BUCKET}/dataflow/tmp/spanwise-script-test.")
    assert spanwise_io.exists(options["pipelineUrl"])


def _submission_argv(corpus: dict[str, str], gcs: GcsEmulator, endpoint: str) -> list[str]:
    return [
        "--data_dir", corpus["data_dir"], "--output_dir", corpus["output_dir"], "--tokenizer", corpus["tokenizer"],
        "--runner", "DataflowRunner", "--project", "test-project", "--region", "europe-west4",
        "--temp_location", gcs.url("tmp"), "--dataflow_endpoint", endpoint, "--no_auth",
        "--job_name", "spanwise-nowait", "--sdk_container_image", CUSTOM_IMAGE,
    ]


def test_no_wait_returns_once_the_job_is_submitted(gcs, corpus, fast_polling, capsys):
    """A job that runs for hours: the command returns at once with its id, and reads no manifest."""
    from beam_pipelines import preprocess

    with FakeDataflow(create_state="JOB_STATE_PENDING", states=["JOB_STATE_RUNNING"]) as fake:
        started = time.monotonic()
        code = preprocess.main(_submission_argv(corpus, gcs, fake.url) + ["--no_wait_until_finish"])
        elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert code == 0 and elapsed < 30
    (job,) = fake.jobs.values()
    assert job["currentState"] in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")  # never driven to an end
    assert f"submitted DataflowRunner job {job['id']} (state " in out
    assert f"https://console.cloud.google.com/dataflow/jobs/europe-west4/{job['id']}?project=test-project" in out
    assert f"its manifest is {corpus['output_dir']}/manifest.json" in out
    assert not spanwise_io.exists(spanwise_io.join(corpus["output_dir"], "manifest.json"))
    assert fake.unhandled == [] and "GET _list_messages" not in fake.calls()  # no polling for the end


def test_a_failed_job_is_an_error_naming_it(gcs, corpus, fast_polling, capsys, caplog):
    from beam_pipelines import preprocess

    with FakeDataflow(create_state="JOB_STATE_PENDING", states=["JOB_STATE_RUNNING", "JOB_STATE_FAILED"]) as fake:
        with pytest.raises(preprocess.JobFailedError, match=r"job .*console\.cloud\.google\.com/dataflow/jobs/europe-west4/"):
            preprocess.run(_submission_argv(corpus, gcs, fake.url))
        assert preprocess.main(_submission_argv(corpus, gcs, fake.url)) == 1
    (first, second) = fake.jobs.values()
    assert first["currentState"] == second["currentState"] == "JOB_STATE_FAILED"
    err = capsys.readouterr().err
    assert f"error: preprocessing job failed (job {second['id']}:" in err
    # while it waited: the job, where to follow it, its states
    assert f"submitted DataflowRunner job {second['id']}; waiting for it to finish" in err
    assert f"follow it at https://console.cloud.google.com/dataflow/jobs/europe-west4/{second['id']}?project=test-project" in err
    assert f"Job {second['id']} is in state JOB_STATE_FAILED" in caplog.text  # Beam's own line


def test_fake_dataflow_answers_the_rest_of_beams_client():
    """The calls Beam makes besides submitting and polling: find a job by name (--update),
    metrics, cancel; and an unknown job or route is a 404 the fake records."""
    import urllib.error
    import urllib.request

    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.dataflow.internal import apiclient

    with FakeDataflow(create_state="JOB_STATE_RUNNING", states=["JOB_STATE_RUNNING"]) as fake:
        client = apiclient.DataflowApplicationClient(PipelineOptions([
            "--project", "test-project", "--region", "us-central1", "--dataflow_endpoint", fake.url, "--no_auth",
            "--temp_location", "gs://b/tmp",
        ]))
        request = urllib.request.Request(
            f"{fake.url}/v1b3/projects/test-project/locations/us-central1/jobs", method="POST",
            data=json.dumps({"name": "other", "clientRequestId": "1"}).encode(), headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            job_id = json.load(reply)["id"]
        assert client.job_id_for_name("other") == job_id
        assert client.get_job(job_id).current_state.name == "JOB_STATE_RUNNING"
        assert list(client.get_job_metrics(job_id).metrics) == []
        assert client.list_messages(job_id) == ([], "")
        assert client.modify_job_state(job_id, "JOB_STATE_CANCELLED")
        assert client.get_job(job_id).current_state.name == "JOB_STATE_CANCELLED"
        assert fake.unhandled == []
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"{fake.url}/v1b3/projects/test-project/snapshots", timeout=10)
        assert error.value.code == 404 and [r.path for r in fake.unhandled] == ["/v1b3/projects/test-project/snapshots"]
