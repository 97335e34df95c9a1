"""GCS with faults: spanwise_io, and the whole flow, through a proxy that answers 503/429 and
resets connections (``fault_proxy.py``); preemption with the checkpoint in ``gs://``.

* ``spanwise_io`` operations meet 503, 429, resets before a request is forwarded and resets
  that cut the reply after the emulator did the work, and still give byte-identical data;
  persistent 403/404 fail at once, persistent 503 after a bounded number of tries; the layering
  (gcsfs's per-request retries, then spanwise_io's whole-operation ones) is checked with
  chosen faults.
* pipeline -> trainer -> predict with every location in ``gs://``, once straight to the emulator
  and once through the faulty proxy: the same shards, manifest, weights and predictions.
* ``python -m trainer.task`` with output and checkpoints in ``gs://``, SIGTERM'd: exit 143, a
  complete checkpoint in the bucket; the same command (run in this process) resumes from it and
  ends with the weights and batches of an uninterrupted run.

gcsfs sleeps 1-2 s, 2-3 s, ... between its tries and spanwise_io 1 s, 2 s, ...; the
``fast_retries`` fixture divides both by 100 in this process, so the faults cost little time.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import spanwise_io
from fault_proxy import FaultProxy, accept_resent_upload_chunks
from gcs_emulator import GcsEmulator, gcs_emulator_fixtures
from trainer_helpers import (  # noqa: F401 (prep and tiny_model are fixtures)
    REPO_ROOT,
    TOKENIZER_FILES,
    load_safetensors,
    minilm_dir,
    prep,
    read_trace,
    subprocess_env,
    task_argv,
    tiny_model,
    topic_rows,
)

gcs_emulator_server, gcs = gcs_emulator_fixtures()

RATES = {"status_503": 0.20, "status_429": 0.03, "reset": 0.05, "reset_after": 0.05}


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    """``copy_dir_to_local`` caches under ~/.cache, keyed by URL: keep each test's copy apart."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def fast_retries(monkeypatch):
    """gcsfs's and spanwise_io's backoff sleeps, divided by 100 (this process only)."""
    import gcsfs.retry

    assert isinstance(gcsfs.retry.asyncio, types.ModuleType), "gcsfs.retry changed: review this fixture"
    real_sleep = asyncio.sleep
    monkeypatch.setattr(gcsfs.retry, "asyncio", types.SimpleNamespace(sleep=lambda delay: real_sleep(delay / 100)))
    monkeypatch.setattr(spanwise_io, "RETRY_INITIAL_DELAY", 0.01)
    monkeypatch.setattr(spanwise_io, "RETRY_MAX_DELAY", 0.16)


@pytest.fixture
def proxy(gcs: GcsEmulator, fast_retries):
    """A FaultProxy in front of the emulator (no faults until a test sets rates or rules)."""
    with FaultProxy(gcs.endpoint, seed=7) as running, accept_resent_upload_chunks():
        yield running


def _through(proxy: FaultProxy):
    return proxy.activated()


# --------------------------------------------------------------------------- classification


def test_is_transient_classification():
    import aiohttp
    import requests.exceptions
    from gcsfs.retry import ChecksumError, HttpError
    from google.api_core import exceptions as api

    transient = [
        HttpError({"code": 503, "message": "x"}), HttpError({"code": 429, "message": "x"}),
        HttpError({"code": 500, "message": "x"}), HttpError({"code": 408, "message": "x"}),
        api.ServiceUnavailable("x"), api.TooManyRequests("x"), api.InternalServerError("x"),
        ConnectionResetError(), BrokenPipeError(), OSError(104, "Connection reset by peer"),
        asyncio.TimeoutError(), aiohttp.ServerDisconnectedError(), aiohttp.ClientPayloadError("cut"),
        aiohttp.ClientOSError(104, "reset"), requests.exceptions.ProxyError(), ChecksumError(),
    ]
    permanent = [
        HttpError({"code": 404, "message": "x"}), HttpError({"code": 403, "message": "x"}),
        HttpError({"code": 400, "message": "x"}), api.NotFound("x"), api.Forbidden("x"),
        FileNotFoundError("x"), PermissionError("x"), OSError("Forbidden: gs://b/o"), ValueError("x"),
        aiohttp.ClientResponseError(None, (), status=404), aiohttp.InvalidURL("x"), RuntimeError("x"),
    ]
    assert [e for e in transient if not spanwise_io.is_transient(e)] == []
    assert [e for e in permanent if spanwise_io.is_transient(e)] == []


# --------------------------------------------------------------------------- spanwise_io under faults


def _parquet_bytes(rows: int) -> bytes:
    table = pa.table({"id": [f"doc-{i:05d}" for i in range(rows)], "x": list(range(rows))})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=rows // 4)
    return buffer.getvalue()


def test_io_survives_503_429_and_resets(gcs: GcsEmulator, proxy: FaultProxy, tmp_path):
    base = gcs.url("faulty")
    files = {
        "small.txt": b"hello\n",
        "ends-with-cr.bin": b"binary\r",  # (gcsfs's one-request upload would lose this \r)
        "empty.bin": b"",
        "sub/seven-mib.bin": bytes(range(256)) * (28 * 1024),  # > 5 MiB: a resumable upload in 2 chunks
        "table.parquet": _parquet_bytes(4000),
    }
    local = tmp_path / "tree"
    for name in ("a.json", "deep/b.bin"):
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(name.encode() * 1000)
    proxy.set_rates(**RATES)
    with _through(proxy):
        for _round in range(2):  # the second round overwrites: other requests, other faults
            for name, data in files.items():
                spanwise_io.write_bytes(spanwise_io.join(base, name), data)
            for name, data in files.items():
                assert spanwise_io.read_bytes(spanwise_io.join(base, name)) == data, name
                assert spanwise_io.size(spanwise_io.join(base, name)) == len(data)
                assert spanwise_io.exists(spanwise_io.join(base, name))
        with spanwise_io.open_read(spanwise_io.join(base, "table.parquet")) as handle:  # seeks
            parquet = pq.ParquetFile(handle)
            assert parquet.read_row_group(3).column("x").to_pylist() == list(range(3000, 4000))
        with spanwise_io.open_read(spanwise_io.join(base, "sub/seven-mib.bin")) as handle:
            handle.seek(6 << 20)
            assert handle.read(10) == files["sub/seven-mib.bin"][6 << 20 : (6 << 20) + 10]
        assert spanwise_io.listdir(base) == sorted(["small.txt", "ends-with-cr.bin", "empty.bin", "sub", "table.parquet"])
        assert spanwise_io.isdir(spanwise_io.join(base, "sub")) and not spanwise_io.isdir(spanwise_io.join(base, "small.txt"))
        assert not spanwise_io.exists(spanwise_io.join(base, "missing"))

        spanwise_io.upload_dir(str(local), spanwise_io.join(base, "tree"))
        copied = spanwise_io.copy_dir_to_local(spanwise_io.join(base, "tree"), cache_root=str(tmp_path / "cache"))
        assert open(os.path.join(copied, "a.json"), "rb").read() == (local / "a.json").read_bytes()
        assert spanwise_io.read_bytes(spanwise_io.join(base, "tree", "deep", "b.bin")) == (local / "deep/b.bin").read_bytes()

        for name in ("small.txt", "ends-with-cr.bin", "table.parquet"):
            spanwise_io.rename(spanwise_io.join(base, name), spanwise_io.join(base, "moved", name))
        spanwise_io.remove(spanwise_io.join(base, "empty.bin"))
        spanwise_io.remove_tree(spanwise_io.join(base, "tree"))
        assert spanwise_io.listdir(base) == ["moved", "sub"]
        assert spanwise_io.listdir(spanwise_io.join(base, "moved")) == ["ends-with-cr.bin", "small.txt", "table.parquet"]
        for name in ("small.txt", "ends-with-cr.bin", "table.parquet"):
            assert spanwise_io.read_bytes(spanwise_io.join(base, "moved", name)) == files[name]
    # every kind of fault happened, and what the bucket holds is right (checked without the proxy)
    assert all(proxy.counts[kind] > 0 for kind in RATES), proxy.counts
    assert spanwise_io.read_bytes(spanwise_io.join(base, "sub/seven-mib.bin")) == files["sub/seven-mib.bin"]
    fs = spanwise_io.filesystem(base)
    assert sorted(fs.find(base)) == sorted(
        f"{gcs.bucket}/faulty/{name}" for name in ("moved/small.txt", "moved/ends-with-cr.bin", "moved/table.parquet", "sub/seven-mib.bin")
    )


def _is_media(method: str, path: str) -> bool:
    return method == "GET" and "alt=media" in path


def test_retries_beyond_gcsfs_and_lost_replies(gcs: GcsEmulator, proxy: FaultProxy):
    """Chosen faults: what gcsfs alone would not survive, spanwise_io does."""
    base = gcs.url("layers")
    data = bytes(range(256)) * 4096
    with _through(proxy):
        # 7 failures in a row: gcsfs gives up after its 6 tries, spanwise_io tries again
        proxy.add_rule("status_503", lambda m, p: m == "POST" and "uploadType=resumable" in p, times=7)
        spanwise_io.write_bytes(spanwise_io.join(base, "a.bin"), data)
        proxy.add_rule("reset", _is_media, times=7)
        assert spanwise_io.read_bytes(spanwise_io.join(base, "a.bin")) == data
        proxy.add_rule("status_503", lambda m, p: m == "GET" and "/o?" in p and "alt=media" not in p, times=7)
        assert spanwise_io.listdir(base) == ["a.bin"]

        # replies lost after the emulator did the work: a re-sent final chunk, move and delete
        # meet a changed bucket (404) and must still count as done
        proxy.add_rule("reset_after", lambda m, p: m == "POST" and "upload_id=" in p, times=1)
        spanwise_io.write_bytes(spanwise_io.join(base, "b.bin"), b"second")
        proxy.add_rule("reset_after", lambda m, p: m == "POST" and "/moveTo/" in p, times=1)
        spanwise_io.rename(spanwise_io.join(base, "b.bin"), spanwise_io.join(base, "c.bin"))
        proxy.add_rule("reset_after", lambda m, p: m == "DELETE", times=1)
        spanwise_io.remove(spanwise_io.join(base, "a.bin"))
        assert spanwise_io.listdir(base) == ["c.bin"]
        assert spanwise_io.read_bytes(spanwise_io.join(base, "c.bin")) == b"second"
    assert proxy.counts["status_503"] == 14 and proxy.counts["reset"] == 7 and proxy.counts["reset_after"] == 3


def test_permanent_errors_fail_fast(gcs: GcsEmulator, proxy: FaultProxy):
    """404 and 403 are not retried; a 503 that never ends stops after a bounded number of tries."""
    from gcsfs.retry import HttpError

    spanwise_io.write_bytes(gcs.url("secret.bin"), b"x")
    spanwise_io.write_bytes(gcs.url("down.bin"), b"y")
    fs = spanwise_io.filesystem(gcs.url())

    def requests_for(name: str, action) -> int:
        """How many requests ``action()`` sent for ``name``, with a cold listing cache."""
        fs.invalidate_cache()
        before = proxy.requests_matching(lambda m, p: name in p)
        started = time.monotonic()
        with pytest.raises(OSError) as raised:
            action()
        assert time.monotonic() - started < 2
        requests_for.error = raised.value
        return proxy.requests_matching(lambda m, p: name in p) - before

    with _through(proxy):
        # as many requests as one plain gcsfs open: no retry of a 404
        plain = requests_for("missing.bin", lambda: fs.open(gcs.url("missing.bin"), "rb"))
        assert requests_for("missing.bin", lambda: spanwise_io.read_bytes(gcs.url("missing.bin"))) == plain
        assert isinstance(requests_for.error, FileNotFoundError)

        proxy.add_rule(403, lambda m, p: "secret.bin" in p)
        assert requests_for("secret.bin", lambda: spanwise_io.read_bytes(gcs.url("secret.bin"))) <= plain
        assert "Forbidden" in str(requests_for.error) and not isinstance(requests_for.error, FileNotFoundError)
        assert requests_for("secret.bin", lambda: spanwise_io.write_bytes(gcs.url("secret.bin"), b"z")) == 1
        assert "Forbidden" in str(requests_for.error)

        proxy.add_rule("status_503", lambda m, p: "down.bin" in p and _is_media(m, p))
        with pytest.raises(HttpError) as unavailable:
            spanwise_io.read_bytes(gcs.url("down.bin"))
        assert unavailable.value.code == 503
        # gcsfs's 6 tries per call, times spanwise_io's tries: bounded
        assert proxy.requests_matching(lambda m, p: "down.bin" in p and _is_media(m, p)) == 6 * spanwise_io.RETRY_ATTEMPTS


# --------------------------------------------------------------------------- the whole flow


def _tsv(split: str, count: int) -> bytes:
    return "".join("\t".join(row) + "\n" for row in topic_rows(split, count)).encode("utf-8")


def _flow(gcs: GcsEmulator, root: str, tiny_model: str, tokenizer_dir: str) -> dict[str, str]:
    """pipeline -> trainer -> predict with every location under ``root`` (gs://)."""
    from beam_pipelines import preprocess
    from trainer import predict, task

    urls = {name: spanwise_io.join(root, name) for name in ("tsv", "tokenizer", "pretrained", "prep", "model", "preds")}
    for split, count in (("train", 90), ("dev", 30), ("test", 30)):
        spanwise_io.write_bytes(spanwise_io.join(urls["tsv"], f"{split}.tsv"), _tsv(split, count))
    spanwise_io.upload_dir(tokenizer_dir, urls["tokenizer"])
    spanwise_io.upload_dir(tiny_model, urls["pretrained"])
    preprocess.run([
        "--data_dir", urls["tsv"], "--output_dir", urls["prep"], "--tokenizer", urls["tokenizer"],
        "--num_shards", "3", "--tokenize_batch_size", "16", "--runner", "DirectRunner",
    ])
    task.run(task_argv(
        urls["prep"], urls["pretrained"], urls["model"],
        "--max_steps", "6", "--save_steps", "3", "--eval_strategy", "steps", "--eval_steps", "6",
    ))
    predict.predict([
        "--model_dir", urls["model"], "--data_dir", urls["prep"], "--split", "test",
        "--output", spanwise_io.join(urls["preds"], "test.jsonl"), "--use_cpu",
    ])
    return urls


def _outputs(root: str, urls: dict[str, str]) -> dict[str, object]:
    """What a run produced, with its own prefix and the manifest's date taken out."""
    def text(url: str) -> str:
        return spanwise_io.read_bytes(url).decode("utf-8").replace(root, "ROOT")

    manifest = json.loads(text(spanwise_io.join(urls["prep"], "manifest.json")))
    manifest.pop("created_at")
    run_dir = spanwise_io.join(urls["prep"], manifest["run"])
    shards = {n: spanwise_io.read_bytes(spanwise_io.join(run_dir, n)) for n in spanwise_io.listdir(run_dir) if n.endswith(".parquet")}
    manifest = json.loads(json.dumps(manifest).replace(manifest["run"], "RUN"))  # (each run has its own folder)
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "model.safetensors")
        with open(weights, "wb") as handle:
            handle.write(spanwise_io.read_bytes(spanwise_io.join(urls["model"], "model.safetensors")))
        tensors = load_safetensors(weights)
    eval_results = json.loads(text(spanwise_io.join(urls["model"], "eval_results.json")))
    return {
        "manifest": manifest,
        "shards": shards,
        "tensors": tensors,
        "predictions": text(spanwise_io.join(urls["preds"], "test.jsonl")),
        "confusion_matrix": eval_results["final"]["confusion_matrix"],
        "loss": eval_results["final"]["loss"],
        "model_files": spanwise_io.listdir(urls["model"]),
        "checkpoints": spanwise_io.listdir(spanwise_io.join(urls["model"], "checkpoints")),
        "runs": [name.split(".")[:3] for name in spanwise_io.listdir(spanwise_io.join(urls["model"], "runs", "topics"))],
    }


def test_flow_all_in_gcs_same_outputs_through_faults(gcs: GcsEmulator, proxy: FaultProxy, tiny_model, tmp_path):  # noqa: F811
    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer_dir.mkdir()
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(minilm_dir(), name), tokenizer_dir / name)

    clean_root = gcs.url("clean")
    clean = _outputs(clean_root, _flow(gcs, clean_root, tiny_model, str(tokenizer_dir)))

    faulty_root = gcs.url("faulty")
    proxy.set_rates(**{kind: rate / 2 for kind, rate in RATES.items()})
    with _through(proxy):
        urls = _flow(gcs, faulty_root, tiny_model, str(tokenizer_dir))
    proxy.set_rates(**dict.fromkeys(RATES, 0.0))
    faulty = _outputs(faulty_root, urls)

    assert proxy.injected > 0 and all(proxy.counts[kind] > 0 for kind in RATES), proxy.counts
    print(f"\nfaulty flow: {proxy.counts['requests']} requests, {proxy.injected} faults injected: "
          f"{ {kind: proxy.counts[kind] for kind in RATES} }")
    assert sorted(faulty["shards"]) == sorted(clean["shards"]) and len(clean["shards"]) >= 4
    assert faulty["shards"] == clean["shards"]  # byte for byte
    assert faulty["manifest"] == clean["manifest"]
    assert faulty["tensors"].keys() == clean["tensors"].keys()
    assert all(torch.equal(faulty["tensors"][k], clean["tensors"][k]) for k in clean["tensors"])
    assert faulty["predictions"] == clean["predictions"] and len(clean["predictions"].splitlines()) == 30
    for key in ("confusion_matrix", "loss", "model_files", "checkpoints", "runs"):
        assert faulty[key] == clean[key], key
    assert clean["checkpoints"] == ["checkpoint-00000003", "checkpoint-00000006"]
    assert clean["runs"] and all(parts == ["events", "out", "tfevents"] for parts in clean["runs"])  # + time, host, pid
    assert {"model.safetensors", "config.json", "run_config.json", "eval_results.json", "checkpoints", "runs"} <= set(clean["model_files"])


# --------------------------------------------------------------------------- preemption, checkpoint in gs://

PREEMPT_STEPS = 24  # 2 epochs of 12 batches


def _preempt_argv(data_url: str, model_url: str, out_url: str, trace) -> list[str]:
    return task_argv(
        data_url, model_url, out_url,
        "--max_steps", str(PREEMPT_STEPS), "--save_steps", "8", "--eval_strategy", "no",
        "--sample_trace_file", str(trace),
    )


def test_preempted_run_resumes_from_gcs_checkpoint(one_torch_thread, gcs: GcsEmulator, prep, tiny_model, tmp_path, caplog):  # noqa: F811
    from trainer import checkpoint as ckpt
    from trainer import task

    data_url, model_url = gcs.url("prep"), gcs.url("pretrained")
    spanwise_io.upload_dir(prep["data_dir"], data_url)
    spanwise_io.upload_dir(tiny_model, model_url)
    out_url, trace = gcs.url("runs", "preempted"), tmp_path / "trace.jsonl"
    argv = _preempt_argv(data_url, model_url, out_url, trace)
    env = subprocess_env(**gcs.env(), HOME=str(tmp_path / "child-home"))

    log = tmp_path / "child.log"  # a file, not a pipe nobody reads while the child runs
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trainer.task", *argv], cwd=REPO_ROOT, env=env,
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if trace.exists() and len(trace.read_text().splitlines()) >= 3:
                os.killpg(proc.pid, signal.SIGTERM)
                break
            time.sleep(0.005)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stderr = log.read_text(errors="replace")
    assert proc.returncode == 143, f"exit {proc.returncode}\n{stderr[-4000:]}"
    assert "stopped by SIGTERM after step" in stderr
    stopped_at = len(read_trace(trace))
    assert 3 <= stopped_at < PREEMPT_STEPS

    # a complete checkpoint of the stop step, in the bucket; no final model yet
    checkpoints = spanwise_io.join(out_url, "checkpoints")
    latest = ckpt.latest_checkpoint(checkpoints)
    assert latest == spanwise_io.join(checkpoints, f"checkpoint-{stopped_at:08d}")
    assert spanwise_io.listdir(latest) == ["COMPLETE", "model.safetensors", "state.pt"]
    assert json.loads(spanwise_io.read_bytes(spanwise_io.join(latest, "COMPLETE"))) == {"step": stopped_at}
    assert not spanwise_io.exists(spanwise_io.join(out_url, "model.safetensors"))

    # the same command again (in this process, to spare a second start of Python and torch)
    with caplog.at_level(logging.INFO, logger="trainer"):
        task.run(argv)
    assert f"resumed from {latest}: step {stopped_at}" in caplog.text
    records = read_trace(trace)
    assert len(records) == PREEMPT_STEPS  # the restart began right after the checkpoint: nothing replayed
    assert (records[stopped_at]["epoch"], records[stopped_at]["batch"]) == divmod(stopped_at, 12)
    assert spanwise_io.listdir(checkpoints) == ["checkpoint-00000016", "checkpoint-00000024"]  # older ones pruned

    # the same weights as an uninterrupted run (in this process, also all in gs://)
    reference_url = gcs.url("runs", "uninterrupted")
    task.run(_preempt_argv(data_url, model_url, reference_url, tmp_path / "reference.jsonl"))
    assert [(r["epoch"], r["batch"], r["ids"]) for r in read_trace(tmp_path / "reference.jsonl")] == [
        (r["epoch"], r["batch"], r["ids"]) for r in records
    ]
    a = load_safetensors(os.path.join(spanwise_io.copy_dir_to_local(out_url), "model.safetensors"))
    b = load_safetensors(os.path.join(spanwise_io.copy_dir_to_local(reference_url), "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
