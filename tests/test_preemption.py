"""Preemption at random points: SIGTERM, SIGKILL, and SIGKILL in the middle of a checkpoint write.

Two parts:

* ``trainer.checkpoint`` on its own (a small ``nn.Linear``, a child process that saves with the
  test hook ``SPANWISE_TEST_KILL_IN_CHECKPOINT_WRITE="<step>:<stage>"`` and dies by SIGKILL at
  that stage): the previous checkpoint stays the latest and loads, the partial one is ignored
  and later removed or replaced, a re-save of a step that is already complete never destroys
  it before the new one is complete, and pruning never removes the newest complete checkpoint.
* ``python -m trainer.task`` interrupted several times, at steps drawn from a seeded generator,
  each time restarted with the same command (which resumes from the latest complete
  checkpoint), then compared with an uninterrupted run: the same batches of sample ids, the
  final weights bit for bit, the same ``eval_results.json``. The interruptions are

  - ``sigterm``: SIGTERM to the process group once the run trains step T (graceful: a
    checkpoint of the stop step, exit 143);
  - ``sigkill``: SIGKILL to the process group once the run trains step T (the sample trace,
    one line written before each batch is trained, is what the test watches);
  - ``kill_in_write``: the hook kills the trainer in the write of checkpoint T at a stage
    (``start``, ``model``, ``state``: a partial directory that must be ignored, then replaced
    by the re-save of T; ``complete``: written but not yet pruned, the next save prunes).

  The plan and every outcome are printed (``pytest -s`` shows them). By default 4 interruptions
  (one of each kind, one kill in a partial write, one after ``COMPLETE``) over 48 steps, 2
  DataLoader workers: the whole file takes about 1.5 minutes on a busy 2-core machine. Variants,
  by environment:

  - ``SPANWISE_PREEMPT_SEED=N``: another plan (default 20261124); the seed is printed, so a
    failing plan can be re-run exactly (the steps of a ``sigterm``/``sigkill`` are where the
    test sends the signal; where it lands depends on timing and is printed too);
  - ``SPANWISE_PREEMPT_ROUNDS=N``: N interruptions of random kinds and stages (the long
    variant), e.g. ``SPANWISE_PREEMPT_ROUNDS=12 SPANWISE_PREEMPT_SEED=7 pytest -s
    tests/test_preemption.py -k random_preemptions``.

* A SIGTERM to the process group exactly while DataLoader workers start (``trainer.data.
  start_loader``): the workers survive it and the main process gets it. Before that fix, torch's
  worker handler re-raised a SIGTERM that arrived before ``worker_init_fn`` ignored it, and the
  run died without a checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer import checkpoint as ckpt
from trainer_helpers import (  # noqa: F401  (prep and tiny_model are fixtures)
    REPO_ROOT,
    load_safetensors,
    prep,
    read_trace,
    run_task_subprocess,
    subprocess_env,
    task_argv,
    tiny_model,
    trace_by_key,
)

KILL_ENV = ckpt.KILL_IN_WRITE_ENV
CHECKPOINT_FILES = ["COMPLETE", "model.safetensors", "state.pt"]
# what a write killed at each stage leaves in the checkpoint directory (local disk)
PARTIAL_FILES = {"start": [], "model": ["model.safetensors"], "state": ["model.safetensors", "state.pt"]}


def _clean_env(**extra: str) -> dict[str, str]:
    """``subprocess_env`` without the kill hook, unless ``extra`` sets it."""
    env = subprocess_env()
    env.pop(KILL_ENV, None)
    env.update(extra)
    return env


# =========================================================================== checkpoint.py alone
_SAVE_SCRIPT = """
import sys, torch
from trainer import checkpoint as ckpt
directory, step, seed, keep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(seed)
model = torch.nn.Linear(4, 3)
ckpt.save_checkpoint(directory, step, model, {"global_step": step, "seed": seed}, keep)
print("saved")
"""


def _linear(seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 3)


def _save(directory: Path, step: int, seed: int, keep: int) -> str:
    """Save checkpoint ``step`` of ``_linear(seed)`` in this process."""
    return ckpt.save_checkpoint(str(directory), step, _linear(seed), {"global_step": step, "seed": seed}, keep)


def _save_killed(directory: Path, step: int, seed: int, keep: int, stage: str) -> None:
    """Save checkpoint ``step`` in a child process that the hook kills at ``stage``."""
    proc = subprocess.run(
        [sys.executable, "-c", _SAVE_SCRIPT, str(directory), str(step), str(seed), str(keep)],
        cwd=REPO_ROOT, env=_clean_env(**{KILL_ENV: f"{step}:{stage}"}), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert "saved" not in proc.stdout
    assert f"{KILL_ENV}={step}:{stage}: killing this process" in proc.stderr


def _loaded_seed(path: str) -> tuple[int, torch.nn.Linear]:
    """Load a checkpoint into a fresh ``nn.Linear``: (the seed in its state, the model)."""
    model = _linear(12345)
    state = ckpt.load_checkpoint(path, model)
    return state["seed"], model


def _assert_holds(path: str, seed: int) -> None:
    """``path`` is a complete checkpoint of exactly ``_linear(seed)``."""
    assert sorted(os.listdir(path)) == CHECKPOINT_FILES
    loaded_seed, model = _loaded_seed(path)
    assert loaded_seed == seed
    reference = _linear(seed)
    assert torch.equal(model.weight, reference.weight) and torch.equal(model.bias, reference.bias)


def _names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.mark.parametrize("stage", ["start", "model", "state"])
def test_kill_in_write_keeps_previous_checkpoint_and_partial_is_replaced(tmp_path, stage):
    directory = tmp_path / "checkpoints"
    _save(directory, 4, seed=1, keep=2)
    _save_killed(directory, 8, seed=2, keep=2, stage=stage)

    partial = directory / "checkpoint-00000008"
    assert _names(directory) == ["checkpoint-00000004", "checkpoint-00000008"]
    assert _names(partial) == PARTIAL_FILES[stage]  # no temp file left: each file is renamed into place
    assert ckpt.list_checkpoints(str(directory)) == [(4, str(directory / "checkpoint-00000004"))]
    assert ckpt.list_checkpoints(str(directory), complete_only=False)[-1] == (8, str(partial))
    assert ckpt.latest_checkpoint(str(directory)) == str(directory / "checkpoint-00000004")
    _assert_holds(str(directory / "checkpoint-00000004"), seed=1)
    with pytest.raises(ValueError, match="incomplete"):
        ckpt.load_checkpoint(str(partial), _linear(0))

    # the resumed run saves step 8 again: into a fresh directory of the same name
    (partial / ".model.safetensors.leftover.tmp").write_bytes(b"half a file")  # as a kill inside a file write leaves
    assert _save(directory, 8, seed=3, keep=2) == str(partial)
    assert ckpt.latest_checkpoint(str(directory)) == str(partial)
    _assert_holds(str(partial), seed=3)
    assert _names(directory) == ["checkpoint-00000004", "checkpoint-00000008"]


def test_partial_checkpoint_of_a_step_not_saved_again_is_pruned(tmp_path):
    """A write killed at step 10 (a SIGTERM checkpoint between two --save_steps) is removed by the next save."""
    directory = tmp_path / "checkpoints"
    _save(directory, 4, seed=1, keep=2)
    _save(directory, 8, seed=2, keep=2)
    _save_killed(directory, 10, seed=3, keep=2, stage="model")
    assert _names(directory) == ["checkpoint-00000004", "checkpoint-00000008", "checkpoint-00000010"]
    assert ckpt.latest_checkpoint(str(directory)) == str(directory / "checkpoint-00000008")

    _save(directory, 12, seed=4, keep=2)
    assert _names(directory) == ["checkpoint-00000008", "checkpoint-00000012"]
    _assert_holds(str(directory / "checkpoint-00000008"), seed=2)
    _assert_holds(str(directory / "checkpoint-00000012"), seed=4)


@pytest.mark.parametrize("stage", ["start", "model", "state"])
def test_resave_of_complete_step_killed_keeps_the_complete_one(tmp_path, stage):
    """keep=1 and the only checkpoint is step 8: a killed re-save of step 8 must not lose it."""
    directory = tmp_path / "checkpoints"
    _save(directory, 4, seed=1, keep=1)
    _save(directory, 8, seed=2, keep=1)
    assert _names(directory) == ["checkpoint-00000008"]

    _save_killed(directory, 8, seed=3, keep=1, stage=stage)
    revision = directory / "checkpoint-00000008-1"
    assert _names(directory) == ["checkpoint-00000008", "checkpoint-00000008-1"]
    assert _names(revision) == PARTIAL_FILES[stage]
    assert ckpt.latest_checkpoint(str(directory)) == str(directory / "checkpoint-00000008")
    _assert_holds(str(directory / "checkpoint-00000008"), seed=2)

    # saved again, completely: the new revision is the latest, the old one is pruned
    assert _save(directory, 8, seed=4, keep=1) == str(revision)
    assert _names(directory) == ["checkpoint-00000008-1"]
    assert ckpt.list_checkpoints(str(directory)) == [(8, str(revision))]
    _assert_holds(str(revision), seed=4)

    # and a third time: revision 2 replaces revision 1
    assert _save(directory, 8, seed=5, keep=1) == str(directory / "checkpoint-00000008-2")
    assert _names(directory) == ["checkpoint-00000008-2"]
    _assert_holds(str(directory / "checkpoint-00000008-2"), seed=5)


def test_kill_after_complete_before_prune(tmp_path):
    """Killed after COMPLETE: the new checkpoint is the latest; the next save prunes what the kill skipped."""
    directory = tmp_path / "checkpoints"
    for step, seed in ((4, 1), (8, 2)):
        _save(directory, step, seed=seed, keep=2)
    _save_killed(directory, 12, seed=3, keep=2, stage="complete")
    assert _names(directory) == ["checkpoint-00000004", "checkpoint-00000008", "checkpoint-00000012"]  # not pruned
    assert ckpt.latest_checkpoint(str(directory)) == str(directory / "checkpoint-00000012")
    _assert_holds(str(directory / "checkpoint-00000012"), seed=3)

    _save(directory, 16, seed=4, keep=2)
    assert _names(directory) == ["checkpoint-00000012", "checkpoint-00000016"]

    # the same stage in a re-save of a complete step: both revisions complete, the newer one wins
    _save_killed(directory, 16, seed=5, keep=2, stage="complete")
    assert _names(directory) == ["checkpoint-00000012", "checkpoint-00000016", "checkpoint-00000016-1"]
    assert ckpt.latest_checkpoint(str(directory)) == str(directory / "checkpoint-00000016-1")
    _assert_holds(str(directory / "checkpoint-00000016-1"), seed=5)
    ckpt.prune_checkpoints(str(directory), keep=2)
    assert _names(directory) == ["checkpoint-00000012", "checkpoint-00000016-1"]


class _KilledInPrune(BaseException):
    """Stands in for a kill in the middle of a prune (raised where the process would die)."""


def test_kill_in_the_middle_of_a_prune_leaves_no_damaged_complete_checkpoint(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoints"
    for step, seed in ((4, 1), (8, 2)):
        _save(directory, step, seed=seed, keep=2)

    def killed(path: str) -> None:
        raise _KilledInPrune(path)

    monkeypatch.setattr(ckpt.spanwise_io, "remove_tree", killed)  # dies after COMPLETE of step 4 is deleted
    with pytest.raises(_KilledInPrune):
        _save(directory, 12, seed=3, keep=2)
    monkeypatch.undo()
    assert _names(directory) == ["checkpoint-00000004", "checkpoint-00000008", "checkpoint-00000012"]
    assert _names(directory / "checkpoint-00000004") == ["model.safetensors", "state.pt"]  # now a partial one
    assert ckpt.list_checkpoints(str(directory)) == [
        (8, str(directory / "checkpoint-00000008")), (12, str(directory / "checkpoint-00000012"))
    ]
    _save(directory, 16, seed=4, keep=2)
    assert _names(directory) == ["checkpoint-00000012", "checkpoint-00000016"]


def _partial(directory: Path, step: int) -> None:
    """A checkpoint directory as a write killed after the model file leaves it."""
    path = directory / f"checkpoint-{step:08d}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"not a whole checkpoint")


def test_prune_keeps_newest_complete_and_newer_partials(tmp_path):
    directory = tmp_path / "checkpoints"
    for step in (4, 8, 12):
        _save(directory, step, seed=step, keep=0)  # keep <= 0: keep every complete checkpoint
    _partial(directory, 6)
    _partial(directory, 16)
    assert _names(directory) == [f"checkpoint-{s:08d}" for s in (4, 6, 8, 12, 16)]

    ckpt.prune_checkpoints(str(directory), keep=0)  # only the stale partial (older than step 12) goes
    assert _names(directory) == [f"checkpoint-{s:08d}" for s in (4, 8, 12, 16)]
    ckpt.prune_checkpoints(str(directory), keep=1)  # never the newest complete; a newer partial stays
    assert _names(directory) == ["checkpoint-00000012", "checkpoint-00000016"]
    assert ckpt.latest_checkpoint(str(directory)) == str(directory / "checkpoint-00000012")
    _assert_holds(str(directory / "checkpoint-00000012"), seed=12)

    # only partials: nothing complete to compare with, so nothing is removed
    only_partial = tmp_path / "only_partial"
    _partial(only_partial, 4)
    ckpt.prune_checkpoints(str(only_partial), keep=1)
    assert _names(only_partial) == ["checkpoint-00000004"]
    assert ckpt.latest_checkpoint(str(only_partial)) is None


def test_kill_hook_is_inert_for_other_steps_and_checks_its_value(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoints"
    monkeypatch.setenv(KILL_ENV, "99:model")  # another step: this process must survive the save
    _save(directory, 4, seed=1, keep=2)
    _assert_holds(str(directory / "checkpoint-00000004"), seed=1)
    for bad in ("model", "4", "4:middle", "x:model"):
        monkeypatch.setenv(KILL_ENV, bad)
        with pytest.raises(ValueError, match=KILL_ENV):
            _save(directory, 8, seed=2, keep=2)


# =========================================================================== the trainer, interrupted
EPOCHS, BATCHES_PER_EPOCH, SAVE_STEPS, KEEP = 4, 12, 4, 3
TOTAL_STEPS = EPOCHS * BATCHES_PER_EPOCH  # 90 training documents, batches of 8
SAVE_POINTS = frozenset(range(SAVE_STEPS, TOTAL_STEPS + 1, SAVE_STEPS)) | {TOTAL_STEPS}
LAST_SIGNAL_STEP = TOTAL_STEPS - SAVE_STEPS  # the last step a SIGTERM / SIGKILL is sent in
DEFAULT_SEED = 20261124
RUN_TIMEOUT_S = 180


def _argv(prep_dir: str, model: str, out: Path, trace: Path, workers: int) -> list[str]:
    return task_argv(
        prep_dir, model, out,
        "--seq_len_func", "rs", "--seq_func_params", "8",
        "--num_train_epochs", str(EPOCHS), "--learning_rate", "1e-2",
        "--save_steps", str(SAVE_STEPS), "--save_total_limit", str(KEEP),
        "--dataloader_num_workers", str(workers),
        "--sample_trace_file", str(trace),
    )


@pytest.fixture(scope="module")
def reference(prep, tiny_model, tmp_path_factory) -> dict[str, Any]:
    """The uninterrupted run (no DataLoader workers; the interrupted one uses 2)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    out, trace = root / "out", root / "trace.jsonl"
    proc = run_task_subprocess(_argv(prep["data_dir"], tiny_model, out, trace, workers=0), timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    records = read_trace(trace)
    assert len(records) == TOTAL_STEPS
    mapping, order = trace_by_key(records)
    assert order == [(epoch, batch) for epoch in range(EPOCHS) for batch in range(BATCHES_PER_EPOCH)]
    return {"out": out, "mapping": mapping, "order": order}


@dataclass(frozen=True)
class Interruption:
    """One planned interruption: ``kind`` at global step ``step`` (``stage`` for ``kill_in_write``)."""

    kind: str
    step: int
    stage: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}@{self.step}" + (f":{self.stage}" if self.stage else "")


def allowed_step(kind: str, step: int, position: int) -> bool:
    """Whether an interruption of ``kind`` may be planned at ``step`` of a run resumed at ``position``.

    A signal is sent no later than ``LAST_SIGNAL_STEP``: it lands a little after it is sent, and
    must land before the run ends.
    """
    if kind == "kill_in_write":
        return step in SAVE_POINTS and step > position
    if not position < step <= LAST_SIGNAL_STEP:
        return False
    return True


def plan_interruptions(seed: int, rounds: int) -> list[Interruption]:
    """``rounds`` interruptions, one drawn in each of ``rounds`` equal slices of the steps.

    With 4 rounds or fewer the kinds are one ``sigterm``, one ``sigkill``, one ``kill_in_write``
    in a partial stage and one after ``COMPLETE``, in a random order; with more, kinds and stages
    are drawn. A ``kill_in_write`` step is a save point (a multiple of ``--save_steps``).
    """
    rng = random.Random(seed)
    if rounds <= 4:
        kinds = [("sigterm", None), ("sigkill", None), ("kill_in_write", rng.choice(["start", "model", "state"])),
                 ("kill_in_write", "complete")][:rounds]
        rng.shuffle(kinds)
    else:
        kinds = []
        for _ in range(rounds):
            kind = rng.choice(["sigterm", "sigkill", "kill_in_write"])
            kinds.append((kind, rng.choice(ckpt.KILL_STAGES) if kind == "kill_in_write" else None))
    plan = []
    for index, (kind, stage) in enumerate(kinds):
        low, high = index * TOTAL_STEPS // rounds + 1, (index + 1) * TOTAL_STEPS // rounds
        if kind == "kill_in_write" and not any(s in SAVE_POINTS for s in range(low, high + 1)):
            kind, stage = "sigkill", None  # a slice without a save point (more rounds than save points)
        candidates = [s for s in range(low, high + 1) if allowed_step(kind, s, 0)]
        if not candidates:  # the slice is past the last step a signal is sent in
            candidates = [max(s for s in range(1, TOTAL_STEPS + 1) if allowed_step(kind, s, 0))]
        plan.append(Interruption(kind, rng.choice(candidates), stage))
    return plan


class Run:
    """One ``python -m trainer.task`` of the interrupted sequence, its log in a file."""

    def __init__(self, argv: list[str], trace: Path, log: Path, env: dict[str, str]) -> None:
        self.trace, self.log = trace, log
        self.lines_before = len(read_trace(trace)) if trace.exists() else 0
        with open(log, "wb") as sink:  # a file, not a pipe nobody reads while the run goes on
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trainer.task", *argv], cwd=REPO_ROOT, env=env,
                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def new_lines(self) -> int:
        """Trace lines written by this run: the batch of step ``resumed + n`` is being trained."""
        try:
            text = self.trace.read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0
        return sum(1 for line in text.splitlines() if line.endswith("}")) - self.lines_before

    def signal_at(self, batches: int, signum: int) -> bool:
        """Send ``signum`` to the process group once this run has begun ``batches`` batches.

        Returns:
            False when the run ended before that.
        """
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while self.proc.poll() is None and time.monotonic() < deadline:
            if self.new_lines() >= batches:
                os.killpg(self.proc.pid, signum)
                return True
            time.sleep(0.002)
        return False

    def finish(self) -> tuple[int, str]:
        """Wait for the trainer, then make sure nothing of its process group is left."""
        try:
            self.proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            # DataLoader workers orphaned by a SIGKILL of the trainer alone (the hook) would exit
            # on their own within seconds; end them now
            deadline = time.monotonic() + 15
            while _group_members(self.proc.pid) and time.monotonic() < deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                time.sleep(0.05)
            assert not _group_members(self.proc.pid), "processes of the killed run are still alive"
        return self.proc.returncode, self.log.read_text(errors="replace")


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid`` (Linux ``/proc``)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        state, process_group = fields[0], int(fields[2])
        if process_group == pgid and state != "Z":
            members.append(int(entry))
    return members


def _checkpoint_state(directory: Path) -> tuple[list[int], list[int]]:
    """(steps of complete checkpoint directories, steps of partial ones)."""
    complete = [step for step, _ in ckpt.list_checkpoints(str(directory))]
    everything = [step for step, _ in ckpt.list_checkpoints(str(directory), complete_only=False)]
    return complete, sorted(set(everything) - set(complete))


def _assert_complete_dirs_are_whole(directory: Path) -> None:
    for _, path in ckpt.list_checkpoints(str(directory)):
        assert sorted(os.listdir(path)) == CHECKPOINT_FILES, path


def _after_saves(complete_before: list[int], saved: list[int]) -> list[int]:
    """The complete checkpoint steps after a run that saved ``saved`` (each save prunes to ``KEEP``)."""
    return sorted(set(complete_before) | set(saved))[-KEEP:] if saved else complete_before


def _expected_resume(log: str, resumed_at: int, latest: str | None) -> None:
    """The run resumed from ``latest`` at step ``resumed_at`` (started afresh when None)."""
    if latest is None:
        assert "resumed from" not in log
    else:
        assert f"resumed from {latest}: step {resumed_at}," in log, log[-3000:]


def test_random_preemptions_resume_to_the_uninterrupted_result(reference, prep, tiny_model, tmp_path):
    seed = int(os.environ.get("SPANWISE_PREEMPT_SEED", DEFAULT_SEED))
    rounds = int(os.environ.get("SPANWISE_PREEMPT_ROUNDS", 4))
    plan = plan_interruptions(seed, rounds)
    print(f"\npreemption plan: SPANWISE_PREEMPT_SEED={seed} SPANWISE_PREEMPT_ROUNDS={rounds}: "
          + ", ".join(map(str, plan)))

    out, trace = tmp_path / "out", tmp_path / "trace.jsonl"
    checkpoints = out / "checkpoints"
    argv = _argv(prep["data_dir"], tiny_model, out, trace, workers=2)
    outcomes: list[str] = []
    pending_partial: int | None = None  # a partial checkpoint left by the hook, not yet re-saved
    position = 0  # the global step the next run resumes at
    for index, planned in enumerate([*plan, None]):
        latest_before = ckpt.latest_checkpoint(str(checkpoints))
        complete_before, _ = _checkpoint_state(checkpoints)
        assert position == (complete_before[-1] if complete_before else 0)
        step = planned.step if planned else None
        if planned and not allowed_step(planned.kind, step, position):  # an earlier signal landed later than planned
            later = [s for s in range(position + 1, TOTAL_STEPS + 1) if allowed_step(planned.kind, s, position)]
            if not later:
                outcomes.append(f"{planned}: skipped, the run is at step {position}")
                continue
            outcomes.append(f"{planned}: moved to step {later[0]}, the run is at step {position}")
            step = later[0]
        env = _clean_env(**({KILL_ENV: f"{step}:{planned.stage}"} if planned and planned.kind == "kill_in_write" else {}))
        run = Run(argv, trace, tmp_path / f"run{index}.log", env)
        if planned and planned.kind in ("sigterm", "sigkill"):
            sent = run.signal_at(step - position, signal.SIGTERM if planned.kind == "sigterm" else signal.SIGKILL)
            assert sent, f"run {index} ended before step {step}\n{run.log.read_text(errors='replace')[-3000:]}"
        returncode, log = run.finish()
        trained = run.new_lines()
        records = read_trace(trace)[run.lines_before:]
        _expected_resume(log, position, latest_before)
        if trained:  # the run begins exactly at the checkpoint's data position
            assert (records[0]["epoch"], records[0]["batch"]) == divmod(position, BATCHES_PER_EPOCH)
        complete, partial = _checkpoint_state(checkpoints)
        _assert_complete_dirs_are_whole(checkpoints)
        if pending_partial is not None and complete and complete[-1] >= pending_partial:
            # the run saved that step again: it removed the partial directory and wrote it afresh
            assert pending_partial not in partial
            assert f"removing interrupted checkpoint {checkpoints / f'checkpoint-{pending_partial:08d}'} before" in log
            pending_partial = None

        if planned is None:
            assert returncode == 0, f"exit {returncode}\n{log[-4000:]}"
            assert position + trained == TOTAL_STEPS
            assert len(complete) == KEEP and complete[-1] == TOTAL_STEPS and not partial
            outcomes.append(f"final run: steps {position + 1}-{TOTAL_STEPS}")
        elif planned.kind == "sigterm":
            assert returncode == 143, f"exit {returncode}\n{log[-4000:]}"
            stopped = int(re.search(r"stopped by SIGTERM after step (\d+)", log).group(1))
            assert stopped == position + trained and stopped >= step
            assert complete == _after_saves(complete_before, [s for s in SAVE_POINTS if position < s < stopped] + [stopped])
            outcomes.append(f"sigterm sent in step {step}: stopped after step {stopped}, checkpoint {stopped}")
        elif planned.kind == "sigkill":
            assert returncode == -signal.SIGKILL, f"exit {returncode}\n{log[-4000:]}"
            last = position + trained  # the step being trained (or saved) when the kill landed
            assert last >= step
            saved_before = max([position] + [s for s in SAVE_POINTS if position < s < last])
            latest_step = complete[-1] if complete else 0
            assert latest_step in ({saved_before, last} if last in SAVE_POINTS else {saved_before})
            outcomes.append(f"sigkill sent in step {step}: landed in step {last}, latest checkpoint {latest_step}"
                            + (f", partial {partial}" if partial else ""))
        else:  # kill_in_write
            assert returncode == -signal.SIGKILL, f"exit {returncode}\n{log[-4000:]}"
            assert f"{KILL_ENV}={step}:{planned.stage}: killing this process" in log
            assert position + trained == step  # killed in the save right after step `step`
            written = checkpoints / f"checkpoint-{step:08d}"
            expected = _after_saves(complete_before, [s for s in SAVE_POINTS if position < s < step])
            if planned.stage == "complete":
                assert complete == expected + [step]  # complete, and the prune did not run
                assert ckpt.latest_checkpoint(str(checkpoints)) == str(written)
            else:
                assert complete == expected and partial[-1] == step  # the partial write is ignored
                assert sorted(os.listdir(written)) == PARTIAL_FILES[planned.stage]
                latest = ckpt.latest_checkpoint(str(checkpoints))
                assert latest == (str(checkpoints / f"checkpoint-{expected[-1]:08d}") if expected else None)
                pending_partial = step
            latest_step = complete[-1] if complete else 0
            outcomes.append(f"kill in write of checkpoint {step} at {planned.stage}: latest checkpoint {latest_step}"
                            + (f", partial {partial}" if partial else ""))
        position = complete[-1] if complete else 0
    print("preemption outcomes:\n  " + "\n  ".join(outcomes))
    assert pending_partial is None

    mapping, order = trace_by_key(read_trace(trace))  # replayed batches carry the same ids
    assert order == reference["order"] and mapping == reference["mapping"]
    a, b = load_safetensors(out / "model.safetensors"), load_safetensors(reference["out"] / "model.safetensors")
    assert sorted(a) == sorted(b)
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"tensors differ: {different[:5]} (of {len(different)})"
    results = json.loads((out / "eval_results.json").read_text())
    assert results == json.loads((reference["out"] / "eval_results.json").read_text())
    assert len(results["history"]) == EPOCHS


# --------------------------------------------------------------------------- SIGTERM at worker start

_WORKER_START_SCRIPT = """
import os, signal, sys
import torch
from torch.utils.data import DataLoader, IterableDataset
from trainer.data import start_loader, worker_init_threads

class Numbers(IterableDataset):
    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        yield from (torch.tensor([i]) for i in range(info.id, 40, info.num_workers))

got_sigterm = []
signal.signal(signal.SIGTERM, lambda signum, frame: got_sigterm.append(signum))
loader = DataLoader(Numbers(), batch_size=None, num_workers=2, worker_init_fn=worker_init_threads)
batches = start_loader(loader) if sys.argv[1] == "start_loader" else iter(loader)
os.killpg(os.getpgid(0), signal.SIGTERM)  # a preemption, as the workers start
try:
    print(sorted(int(x) for x in batches) == list(range(40)), bool(got_sigterm))
except RuntimeError as error:
    print("failed:", error)
sys.stdout.flush()
os._exit(0)  # (a loader that lost a worker can hang at interpreter exit)
"""


@pytest.mark.parametrize("start", ["start_loader", "iter"])
def test_sigterm_while_dataloader_workers_start(start):
    """The trainer's way survives a SIGTERM sent the moment the workers fork; plain ``iter``
    (the way before the fix) loses a worker to it in most runs."""
    outcomes = []
    for _ in range(4):
        result = subprocess.run(
            [sys.executable, "-c", _WORKER_START_SCRIPT, start], cwd=REPO_ROOT, env=subprocess_env(),
            capture_output=True, text=True, timeout=120, start_new_session=True,  # killpg hits only the child
        )
        outcomes.append(result.stdout.strip() or f"exit {result.returncode}")
    if start == "start_loader":
        assert outcomes == ["True True"] * 4, outcomes
    else:
        assert any(o.startswith("failed: DataLoader worker") for o in outcomes), outcomes
