"""The run's plan, decided before its first step: which shards, how many steps, resume or not.

``trainer.task.Trainer`` holds the loop; everything it must know before the loop starts is
decided here, once, and held by one ``RunPlan``:

* the shards of every split the run reads, checked on rank 0 and broadcast (``scan``), and the
  row groups found bad while reading, so that every rank skips the same ones (``ShardProblems``);
* the training data stream and its counts: batches per epoch, optimizer steps, epochs, warmup
  steps, and the arguments that decide the result (``plan_training``);
* whether ``--output_dir`` is resumed, started afresh, refused, or already holds this very run,
  finished (``decide_resume``).

Nothing here builds a model or an optimizer: a plan can be made, and a resume refused, in the
seconds before any weights are loaded.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Callable, Mapping, Sequence

import torch.distributed as dist

import spanwise_io
from modeling.classifier import RUN_CONFIG_NAME
from modeling.features import FeatureBuilder
from schemas.manifest import problem_type_of
from schemas.shard import MULTI_LABEL
from trainer import checkpoint as ckpt
from trainer import resume
from trainer.args import TrainConfig
from trainer.data import ShardStream
from trainer.distributed import DistContext
from trainer.optimization import warmup_steps
from trainer.shards import DataLimits, SplitScan, Unit, scan_split, take_first

__all__ = ["RunPlan", "ShardProblems", "protected_steps"]

log = logging.getLogger("trainer")


class ShardProblems:
    """Shards and row groups that a run skips (``--skip_bad_shards``), the same on every rank.

    Whole shards are found bad by the scan before the first step; row groups while reading
    (``note``), in a DataLoader worker or during evaluation. ``sync`` gathers the row groups of
    every rank before they are written to ``run_config.json`` and ``eval_results.json``.
    """

    def __init__(self, ctx: DistContext, skip_bad_shards: bool) -> None:
        self.ctx = ctx
        self.skip_bad_shards = skip_bad_shards
        self.scans: dict[str, SplitScan] = {}
        # (split, path, row group) -> record
        self.row_groups: dict[tuple[str, str, int], dict[str, Any]] = {}

    def note(self, split: str, records: Sequence[dict[str, Any]]) -> None:
        """Count row groups skipped while reading (each once), with a warning the first time."""
        for record in records:
            key = (split, record["path"], record["row_group"])
            if key not in self.row_groups:
                self.row_groups[key] = {"split": split, **record}
                log.warning(
                    "--skip_bad_shards: skipping %s, row group %d (split %r, %s rows): %s",
                    record["path"], record["row_group"], split, record["rows"], record["problem"],
                )

    def restore(self, records: Sequence[dict[str, Any]]) -> None:
        """The row groups a resumed checkpoint had skipped."""
        for record in records:
            self.row_groups.setdefault((record["split"], record["path"], record["row_group"]), record)

    def records(self) -> list[dict[str, Any]]:
        return list(self.row_groups.values())

    def sync(self) -> None:
        """Every rank learns the row groups the others skipped (before they are written out)."""
        if not self.ctx.distributed:
            return
        gathered: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(gathered, self.records())
        for records in gathered:
            self.restore(records)

    def to_dict(self) -> dict[str, Any]:
        """Skipped shards and row groups and unlisted files, for run_config.json and eval_results.json."""
        files = [{"split": split, **problem.to_dict()} for split, scan in self.scans.items() for problem in scan.skipped]
        groups = sorted(self.row_groups.values(), key=lambda r: (r["split"], r["path"], r["row_group"]))
        return {
            "skip_bad_shards": self.skip_bad_shards,
            "skipped_files": len(files),
            "skipped_row_groups": len(groups),
            "skipped_rows": sum(record["rows"] or 0 for record in files + groups),
            "files": files,
            "row_groups": groups,
            "unlisted_files": [path for scan in self.scans.values() for path in scan.unlisted],
        }


def protected_steps(config: TrainConfig, best_step: int | None) -> set[int]:
    """Checkpoints that pruning keeps: the best one, for ``--load_best_model_at_end``."""
    return {best_step} if config.load_best_model_at_end and best_step is not None else set()


class RunPlan:
    """What one run reads and how long it trains, and where it starts from.

    Made by ``scan`` (every run), then ``plan_training`` and ``decide_resume`` (training runs).

    Attributes:
        problems: the skipped shards and row groups (``ShardProblems``).
        train_units, eval_units, test_units: the row groups each phase reads (``--max_*_samples`` applied).
        dataset: the training stream (``ShardStream``); None without ``--do_train``.
        batches_per_epoch, steps_per_epoch, total_steps, num_epochs, num_warmup_steps: the schedule.
        result_args: the arguments that decide the result, recorded with checkpoints and the model.
        resume_from: ``(checkpoint path, its state)`` to continue from, or None.
        finished_run: set when ``--output_dir`` already holds this very run, finished.
    """

    def __init__(self, config: TrainConfig, ctx: DistContext, manifest: Mapping[str, Any]) -> None:
        self.config, self.ctx, self.manifest = config, ctx, manifest
        self.problems = ShardProblems(ctx, config.skip_bad_shards)
        self.train_units: list[Unit] = []
        self.eval_units: list[Unit] = []
        self.test_units: list[Unit] = []
        self.dataset: ShardStream | None = None
        self.batches_per_epoch = self.steps_per_epoch = self.total_steps = self.num_epochs = self.num_warmup_steps = 0
        self.result_args: dict[str, Any] = {}
        self.resume_from: tuple[str, dict[str, Any]] | None = None
        self.finished_run: str | None = None

    @property
    def scans(self) -> dict[str, SplitScan]:
        return self.problems.scans

    def limits(self, split: str) -> DataLimits:
        """Allowed labels and token ids of ``split``: the training split must be labelled."""
        labelled = self.config.do_train and split == self.config.train_split
        return DataLimits(len(self.manifest["label_map"]), not labelled, self.manifest["tokenizer"].get("vocab_size"),
                          multi_label=problem_type_of(self.manifest) == MULTI_LABEL)

    # ------------------------------------------------------------------ shards
    def scan(self) -> None:
        """Check every shard of the splits this run reads (listing + Parquet footers), before any step.

        Rank 0 scans and broadcasts the result (or its error), so every rank trains on the same
        units even if a read would fail on one rank only; a bad shard stops every rank with the
        same message, or with ``--skip_bad_shards`` is skipped by every rank.
        """
        c = self.config
        wanted = [(c.do_train, c.train_split), (c.do_eval, c.eval_split), (c.do_predict, c.test_split)]
        splits = list(dict.fromkeys(split for on, split in wanted if on))
        outcome: Any = None
        failure: Exception | None = None
        if self.ctx.rank == 0:
            try:
                outcome = {
                    split: scan_split(c.data_dir, self.manifest, split, limits=self.limits(split),
                                      skip_bad_shards=c.skip_bad_shards)
                    for split in splits
                }
            except Exception as error:  # every rank must leave the broadcast below, then fail the same way
                failure = error
                outcome = (ValueError, str(error)) if isinstance(error, ValueError) else (
                    RuntimeError, f"rank 0 could not check the shards of {c.data_dir} ({type(error).__name__}: {error})"
                )
        if self.ctx.distributed:
            box = [outcome]
            dist.broadcast_object_list(box, src=0)
            outcome = box[0]
        if failure is not None:
            raise failure
        if isinstance(outcome, tuple):
            error_type, message = outcome
            raise error_type(message)
        self.problems.scans = outcome
        if self.ctx.is_main:
            for split, scan in self.scans.items():
                for problem in scan.skipped:
                    log.warning("--skip_bad_shards: skipping %s (split %r, %s rows)", problem, split, problem.rows)

    def take_units(self) -> None:
        """The row groups of each phase, ``--max_train_samples`` and the like applied."""
        c = self.config
        self.train_units = take_first(self.scans[c.train_split].units, c.max_train_samples) if c.do_train else []
        self.eval_units = take_first(self.scans[c.eval_split].units, c.max_eval_samples) if c.do_eval else []
        self.test_units = take_first(self.scans[c.test_split].units, c.max_predict_samples) if c.do_predict else []

    # ------------------------------------------------------------------ schedule
    def plan_training(self, features: FeatureBuilder, pad_token_id: int, train_views: int | str) -> None:
        """The data stream and the number of steps (needed to decide whether a checkpoint fits this run)."""
        c = self.config
        self.dataset = ShardStream(
            self.train_units,
            features,
            batch_size=c.per_device_train_batch_size,
            seed=c.seed,
            pad_token_id=pad_token_id,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            shuffle_buffer=c.shuffle_buffer,
            pad_to_multiple_of=c.pad_to_multiple_of or None,
            limits=self.limits(c.train_split),
            skip_bad_row_groups=c.skip_bad_shards,
            group_by_length=c.group_by_length,
            views=train_views,
            max_tokens_per_batch=c.max_tokens_per_batch,
            pack_capacity=c.max_seq_length if c.pack_views else None,
        )
        if c.max_tokens_per_batch:
            self._plan_token_budget()
        else:
            self.batches_per_epoch = self.dataset.plan(0).num_batches
            if self.batches_per_epoch == 0:
                raise ValueError(f"{c.data_dir}: split {c.train_split!r} has no documents to train on")
            self.steps_per_epoch = math.ceil(self.batches_per_epoch / c.gradient_accumulation_steps)
            self.total_steps = c.max_steps if c.max_steps > 0 else math.ceil(self.steps_per_epoch * c.num_train_epochs)
            self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.num_warmup_steps = warmup_steps(c.warmup_steps, c.warmup_ratio, self.total_steps)
        self.result_args = resume.result_args(
            c, world_size=self.ctx.world_size, total_steps=self.total_steps, warmup_steps=self.num_warmup_steps,
            data_created_at=self.manifest.get("created_at"),
        )

    def _plan_token_budget(self) -> None:
        """``--max_tokens_per_batch``: the batches of each epoch the run trains, counted now.

        Each epoch's cut depends on its order, so epochs have slightly different batch counts;
        the schedule needs the exact number of optimizer steps, so the epochs are counted up
        front: up to ``ceil(--num_train_epochs)`` epochs (the last one's fraction of its steps),
        or with ``--max_steps`` until the steps are reached. A count costs a pass over the
        (in-memory) view lengths of the rank's rows, no read of the shards.
        """
        c = self.config
        accum = c.gradient_accumulation_steps
        steps: list[int] = []
        while True:
            batches = self.batches_in(len(steps))
            if batches == 0:
                raise ValueError(f"{c.data_dir}: split {c.train_split!r} has no documents to train on")
            steps.append(math.ceil(batches / accum))
            if c.max_steps > 0 and sum(steps) >= c.max_steps:
                break
            if c.max_steps <= 0 and len(steps) >= math.ceil(c.num_train_epochs):
                break
        if c.max_steps > 0:
            self.total_steps = c.max_steps
        else:
            whole = int(math.floor(c.num_train_epochs))
            fraction = c.num_train_epochs - whole
            self.total_steps = sum(steps[:whole]) + (math.ceil(steps[whole] * fraction) if fraction else 0)
        self.batches_per_epoch = self.batches_in(0)
        self.steps_per_epoch = steps[0]
        self.num_epochs = len(steps)
        if self.ctx.is_main:
            log.info("--max_tokens_per_batch %d: batches per epoch %s (every rank), %d optimizer steps",
                     c.max_tokens_per_batch, [self.batches_in(e) for e in range(len(steps))], self.total_steps)

    def batches_in(self, epoch: int) -> int:
        """Batches of ``epoch`` (every rank the same): fixed, or under a token budget the largest
        count of any rank (gathered: every rank must call this for the same epochs, in order)."""
        dataset = self.dataset
        if dataset is None or not dataset.max_tokens_per_batch:
            return self.batches_per_epoch
        if epoch not in dataset.epoch_batches:
            own = dataset.plan(epoch).num_batches
            counts = [own]
            if self.ctx.distributed:
                counts = [None] * self.ctx.world_size
                dist.all_gather_object(counts, own)
            dataset.epoch_batches[epoch] = max(int(n) for n in counts)
            if dataset.cost_problems:
                self.problems.note(self.config.train_split, [p.to_dict() for p in dataset.cost_problems])
                dataset.cost_problems.clear()
        return dataset.epoch_batches[epoch]

    def group_of(self, batch_index: int, epoch: int = 0) -> tuple[int, bool]:
        """(batches in the accumulation group of this batch, whether it is the group's last)."""
        accum = self.config.gradient_accumulation_steps
        start = (batch_index // accum) * accum
        size = min(accum, self.batches_in(epoch) - start)
        return size, batch_index - start == size - 1

    def signature(self) -> dict[str, int]:
        """What fixes the data order; checkpoints of versions before ``result_args`` are checked by it."""
        c = self.config
        return {
            "world_size": self.ctx.world_size,
            "per_device_train_batch_size": c.per_device_train_batch_size,
            "gradient_accumulation_steps": c.gradient_accumulation_steps,
            "shuffle_buffer": c.shuffle_buffer,
            "seed": c.seed,
            "fixed_spans": int(c.fixed_spans),
        }

    # ------------------------------------------------------------------ resume
    def decide_resume(self, barrier: Callable[[], None]) -> None:
        """Resume, start afresh, or refuse, by what ``--output_dir`` holds (``trainer.resume``)."""
        c = self.config
        if c.overwrite_output_dir:
            barrier()
            if self.ctx.is_main:
                resume.clear_output_dir(c)
            barrier()
            return
        run_config_path = spanwise_io.join(c.output_dir, RUN_CONFIG_NAME)
        finished = json.loads(spanwise_io.read_bytes(run_config_path)) if spanwise_io.exists(run_config_path) else None
        choice = c.resume_from_checkpoint
        latest = ckpt.latest_checkpoint(c.resolved_checkpoint_dir)
        if choice == "no":
            if latest or finished:
                raise ValueError(
                    f"{c.output_dir} holds a run ({latest or run_config_path}) and --resume_from_checkpoint no would "
                    "start afresh over it: add --overwrite_output_dir (its checkpoints and model are deleted), or give "
                    "a new --output_dir"
                )
            return
        path = latest if choice == "auto" else choice
        if path is None:
            if finished is not None:
                self._check_same_run(finished.get("result_args"), run_config_path)
                self.finished_run = run_config_path
            return
        state = ckpt.read_state(path)
        if "result_args" in state:
            self._check_same_run(json.loads(state["result_args"]), path)
        elif state["plan"] != self.signature():  # a checkpoint of an earlier version
            raise ValueError(
                f"{path}: checkpoint was made with {state['plan']}, this run has {self.signature()}; "
                "resume with the same values, add --overwrite_output_dir, or give a new --output_dir"
            )
        done = state["global_step"] >= self.total_steps or bool(state.get("stopped_early", False))
        if done and finished is not None and choice == "auto":
            self.finished_run = path
            return
        self.resume_from = (path, state)

    def _check_same_run(self, saved: dict[str, Any] | None, where: str) -> None:
        if saved is None:  # written by an earlier version: its arguments cannot be compared
            log.warning("%s records no arguments to compare with; assuming they are this run's", where)
            return
        diffs = resume.differences(saved, json.loads(json.dumps(self.result_args, default=str)))
        if diffs:
            raise resume.refusal(where, self.config.output_dir, diffs)
