"""``python -m trainer.task``: fine-tune a sequence classifier on preprocessed shards.

Set-up / train / evaluate / save as methods of one ``Trainer``, with the training loop readable in
one sitting. What comes from libraries: the model, tokenizer and linear schedule from
transformers; AdamW, autocast, the gradient scaler, DDP and the process group from torch;
TensorBoard's SummaryWriter; tqdm. What is ours: the streaming data order (``trainer.data``),
checkpoints with the exact data position (``trainer.checkpoint``), the per-document views for
evaluation and the metrics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
import warnings
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

import spanwise_io
from schemas.manifest import check_compatible, read_manifest
from tokenization.seq_len import validate_seq_config
from tokenization.tokenizer import load_tokenizer, tokenizer_identity
from trainer import checkpoint as ckpt
from trainer.args import TrainConfig, parse_args
from trainer.cloud import HypertuneReporter, is_tuning_trial, notify_webhook, run_summary
from trainer.data import DataLimits, ShardStream, SplitScan, raise_batch_error, scan_split, start_loader, worker_init_threads
from trainer.distributed import DistContext, init_distributed, shutdown_distributed
from trainer.evaluation import evaluate_split, parse_views
from trainer.features import FeatureBuilder, SpecialTokenTemplate, collate
from trainer.tensorboard_logs import TensorBoardLogger

__all__ = ["Trainer", "Preempted", "run", "main", "rank_trace_path"]

log = logging.getLogger("trainer")
RUN_CONFIG_NAME = "run_config.json"
EVAL_RESULTS_NAME = "eval_results.json"
PREPROCESS_MANIFEST_NAME = "preprocess_manifest.json"
# Test hook: raise after this optimizer step, to check that an exception-interrupted run resumes.
FAIL_AFTER_STEP_ENV = "SPANWISE_TEST_FAIL_AFTER_STEP"


def rank_trace_path(path: str, rank: int, world_size: int) -> str:
    """The ``--sample_trace_file`` of one rank: ``trace.jsonl`` -> ``trace.rank1.jsonl`` when world size > 1."""
    if world_size <= 1:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.rank{rank}{ext}"


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was written and the run should exit for a restart."""


def local_model_path(name_or_path: str) -> str:
    """A model or tokenizer location that transformers can open: gs:// dirs are copied locally."""
    return spanwise_io.copy_dir_to_local(name_or_path) if spanwise_io.is_remote(name_or_path) else name_or_path


def load_classifier(name_or_path: str, **kwargs: Any) -> Any:
    """``AutoModelForSequenceClassification.from_pretrained``, with a clear error for pickled weights.

    transformers reads a ``pytorch_model.bin`` with ``torch.load(weights_only=True)``, which
    refuses a pickle that would build arbitrary objects (or run code); that refusal becomes a
    ValueError naming the model instead of a traceback.
    """
    import pickle

    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification.from_pretrained(local_model_path(name_or_path), **kwargs)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{name_or_path}: refusing its pickled weights (pytorch_model.bin), which would build arbitrary "
            f"objects when loaded; use a copy saved as model.safetensors ({first_line})"
        ) from error


class Trainer:
    """One training run: ``setup()``, then ``train()`` and/or ``evaluate()``, then ``save()``."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.stop_requested = False
        self.global_step = 0
        self.epoch = 0
        self.next_batch = 0
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.eval_history: list[dict[str, Any]] = []
        self.writer: Any = None
        self.hypertune: HypertuneReporter | None = None
        self.scans: dict[str, SplitScan] = {}
        # row groups found corrupt while reading (--skip_bad_shards): (split, path, row group) -> record
        self.bad_row_groups: dict[tuple[str, str, int], dict[str, Any]] = {}

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        c = self.config
        self.ctx: DistContext = init_distributed(c.use_cpu)
        if c.fp16 and self.ctx.device.type != "cuda":
            raise ValueError("--fp16 needs a GPU; use --bf16 on a CPU")
        if self.ctx.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.manifest = read_manifest(c.data_dir)
        tokenizer_source = c.tokenizer_name or c.model_name
        self.tokenizer = load_tokenizer(tokenizer_source, trust_remote_code=c.trust_remote_code)
        check_compatible(self.manifest, tokenizer_identity(self.tokenizer, tokenizer_source))
        self.seq_config = validate_seq_config(c.seq_len_func, c.seq_func_params, c.max_seq_length, self.tokenizer)
        self.views = parse_views(c.eval_views)
        label_map = self.manifest["label_map"]
        self.label_names = [name for name, _ in sorted(label_map.items(), key=lambda item: item[1])]
        self.features = FeatureBuilder(
            self.seq_config, SpecialTokenTemplate.from_tokenizer(self.tokenizer), c.seed, fixed_spans=c.fixed_spans
        )
        self.pad_token_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        self._scan_shards()
        self.train_units = self.scans[c.train_split].units if c.do_train else []
        self.eval_units = self.scans[c.eval_split].units if c.do_eval else []
        self.autocast_dtype = torch.bfloat16 if c.bf16 else torch.float16 if c.fp16 else None

        torch.manual_seed(c.seed)  # the new classifier head is initialised from this
        self.model = load_classifier(
            c.model_name,
            num_labels=len(self.label_names),
            id2label=dict(enumerate(self.label_names)),
            label2id=dict(label_map),
            trust_remote_code=c.trust_remote_code,
        ).to(self.ctx.device)
        if self.ctx.distributed:
            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.ddp: torch.nn.Module | None = DistributedDataParallel(self.model, device_ids=device_ids)
        else:
            self.ddp = None
        if c.do_train:
            self._setup_optimization()
        if self.ctx.is_main:
            self.writer = TensorBoardLogger(c.resolved_logging_dir)
            if is_tuning_trial():
                self.hypertune = HypertuneReporter(c.hypertune_metric_tag or c.metric_for_best_model)
            self.writer.add_text("run_config", "```\n" + json.dumps(self.run_config(), indent=2) + "\n```")

    def data_limits(self, split: str) -> DataLimits:
        """Allowed labels and token ids of ``split``: the training split must be labelled."""
        labelled = self.config.do_train and split == self.config.train_split
        return DataLimits(len(self.manifest["label_map"]), not labelled, self.manifest["tokenizer"].get("vocab_size"))

    def _scan_shards(self) -> None:
        """Check every shard of the splits this run reads (listing + Parquet footers), before any step.

        Rank 0 scans and broadcasts the result (or its error), so every rank trains on the same
        units even if a read would fail on one rank only; a bad shard stops every rank with the
        same message, or with ``--skip_bad_shards`` is skipped by every rank.
        """
        c = self.config
        splits = list(dict.fromkeys(([c.train_split] if c.do_train else []) + ([c.eval_split] if c.do_eval else [])))
        outcome: Any = None
        failure: Exception | None = None
        if self.ctx.rank == 0:
            try:
                outcome = {
                    split: scan_split(
                        c.data_dir, self.manifest, split, limits=self.data_limits(split), skip_bad_shards=c.skip_bad_shards
                    )
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
        self.scans = outcome
        if self.ctx.is_main:
            for split, scan in self.scans.items():
                for problem in scan.skipped:
                    log.warning("--skip_bad_shards: skipping %s (split %r, %s rows)", problem, split, problem.rows)

    def data_problems(self) -> dict[str, Any]:
        """Skipped shards and row groups and unlisted files, for run_config.json and eval_results.json."""
        files = [{"split": split, **problem.to_dict()} for split, scan in self.scans.items() for problem in scan.skipped]
        groups = sorted(self.bad_row_groups.values(), key=lambda r: (r["split"], r["path"], r["row_group"]))
        return {
            "skip_bad_shards": self.config.skip_bad_shards,
            "skipped_files": len(files),
            "skipped_row_groups": len(groups),
            "skipped_rows": sum(record["rows"] or 0 for record in files + groups),
            "files": files,
            "row_groups": groups,
            "unlisted_files": [path for scan in self.scans.values() for path in scan.unlisted],
        }

    def _note_bad_row_groups(self, split: str, records: Sequence[dict[str, Any]]) -> None:
        """Count row groups skipped while reading (each once), with a warning the first time."""
        for record in records:
            key = (split, record["path"], record["row_group"])
            if key not in self.bad_row_groups:
                self.bad_row_groups[key] = {"split": split, **record}
                log.warning(
                    "--skip_bad_shards: skipping %s, row group %d (split %r, %s rows): %s",
                    record["path"], record["row_group"], split, record["rows"], record["problem"],
                )

    def _sync_bad_row_groups(self) -> None:
        """Every rank learns the row groups the others skipped (before they are written out)."""
        if not self.ctx.distributed:
            return
        gathered: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(gathered, list(self.bad_row_groups.values()))
        for records in gathered:
            for record in records:
                self.bad_row_groups.setdefault((record["split"], record["path"], record["row_group"]), record)

    def _setup_optimization(self) -> None:
        c = self.config
        self.dataset = ShardStream(
            self.train_units,
            self.features,
            batch_size=c.per_device_train_batch_size,
            seed=c.seed,
            pad_token_id=self.pad_token_id,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            shuffle_buffer=c.shuffle_buffer,
            pad_to_multiple_of=c.pad_to_multiple_of or None,
            limits=self.data_limits(c.train_split),
            skip_bad_row_groups=c.skip_bad_shards,
        )
        self.batches_per_epoch = self.dataset.plan(0).num_batches
        if self.batches_per_epoch == 0:
            raise ValueError(f"{c.data_dir}: split {c.train_split!r} has no documents to train on")
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / c.gradient_accumulation_steps)
        self.total_steps = c.max_steps if c.max_steps > 0 else math.ceil(self.steps_per_epoch * c.num_train_epochs)
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
        groups = [
            {"params": [p for n, p in self.model.named_parameters() if not n.endswith(no_decay)], "weight_decay": c.weight_decay},
            {"params": [p for n, p in self.model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
        ]
        options = dict(lr=c.learning_rate, betas=(c.adam_beta1, c.adam_beta2), eps=c.adam_epsilon)
        try:
            self.optimizer = torch.optim.AdamW(groups, fused=True, **options)
        except (RuntimeError, TypeError):  # fused not supported for this device/dtype
            self.optimizer = torch.optim.AdamW(groups, foreach=True, **options)
        from transformers import get_linear_schedule_with_warmup

        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(round(c.warmup_ratio * self.total_steps)), self.total_steps
        )
        self.scaler = torch.amp.GradScaler(self.ctx.device.type, enabled=c.fp16)

    def run_config(self) -> dict[str, Any]:
        """What made this model: flags, seq function with budgets, data, world size."""
        return {
            "args": self.config.to_dict(),
            "seq_len": self.seq_config.to_dict(),
            "label_names": self.label_names,
            "world_size": self.ctx.world_size,
            "data_manifest_created_at": self.manifest.get("created_at"),
            "data_problems": self.data_problems(),
            "tokenizer": tokenizer_identity(self.tokenizer, self.config.tokenizer_name or self.config.model_name),
            "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        }

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        rngs = [rng]
        if self.ctx.distributed:
            rngs = [None] * self.ctx.world_size
            dist.all_gather_object(rngs, rng)
        return {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "next_batch": self.next_batch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "eval_history": json.dumps(self.eval_history),
            "bad_row_groups": json.dumps(list(self.bad_row_groups.values())),
            "plan": self._plan_signature(),
        }

    def _plan_signature(self) -> dict[str, int]:
        c = self.config
        return {
            "world_size": self.ctx.world_size,
            "per_device_train_batch_size": c.per_device_train_batch_size,
            "gradient_accumulation_steps": c.gradient_accumulation_steps,
            "shuffle_buffer": c.shuffle_buffer,
            "seed": c.seed,
            "fixed_spans": int(c.fixed_spans),
        }

    def save_checkpoint(self) -> None:
        state = self._state()  # every rank takes part (RNG gather)
        if self.ctx.is_main:
            path = ckpt.save_checkpoint(
                self.config.resolved_checkpoint_dir, self.global_step, self.model, state, self.config.save_total_limit
            )
            log.info("checkpoint %s (epoch %d, batch %d)", path, self.epoch, self.next_batch)
            self.writer.sync()
        self._barrier()

    def maybe_resume(self) -> None:
        choice = self.config.resume_from_checkpoint
        if choice == "no":
            return
        path = ckpt.latest_checkpoint(self.config.resolved_checkpoint_dir) if choice == "auto" else choice
        if path is None:
            return
        state = ckpt.load_checkpoint(path, self.model)
        if state["plan"] != self._plan_signature():
            raise ValueError(
                f"{path}: checkpoint was made with {state['plan']}, this run has {self._plan_signature()}; "
                "resume with the same values or start a new --output_dir"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"][self.ctx.rank]
        torch.set_rng_state(rng["cpu"])
        if torch.cuda.is_available() and rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.global_step, self.epoch, self.next_batch = state["global_step"], state["epoch"], state["next_batch"]
        self.best_metric, self.best_step = state["best_metric"], state["best_step"]
        self.eval_history = json.loads(state["eval_history"])
        for record in json.loads(state.get("bad_row_groups", "[]")):
            self.bad_row_groups.setdefault((record["split"], record["path"], record["row_group"]), record)
        if self.ctx.is_main:
            log.info("resumed from %s: step %d, epoch %d, batch %d", path, self.global_step, self.epoch, self.next_batch)

    # ------------------------------------------------------------------ training
    def _barrier(self) -> None:
        if self.ctx.distributed:
            dist.barrier()

    def _should_stop(self) -> bool:
        """SIGTERM on any rank stops every rank at the same step."""
        flag = self.stop_requested
        if self.ctx.distributed:
            tensor = torch.tensor([1.0 if flag else 0.0], device=self.ctx.device)
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            flag = bool(tensor.item())
        return flag

    def _start_batches(self) -> Iterator[dict[str, Any]]:
        """This epoch's batches, from the position to resume at (workers started SIGTERM-safe)."""
        loader = self._loader()
        return start_loader(loader) if self.config.dataloader_num_workers else iter(loader)

    def _loader(self) -> DataLoader:
        c = self.config
        self.dataset.set_epoch(self.epoch, self.next_batch)
        return DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=c.dataloader_num_workers,
            worker_init_fn=worker_init_threads if c.dataloader_num_workers else None,
            # a generator of its own, so creating the loader does not advance the global RNG
            generator=torch.Generator().manual_seed(c.seed),
            pin_memory=self.ctx.device.type == "cuda",
            prefetch_factor=4 if c.dataloader_num_workers else None,
        )

    def train(self) -> None:
        c = self.config
        self.maybe_resume()
        # line-buffered: every batch is on disk as soon as it is trained on, so the trace of a run
        # that is killed, preempted or fails is complete up to that batch
        trace = (
            open(rank_trace_path(c.sample_trace_file, self.ctx.rank, self.ctx.world_size), "a", encoding="utf-8", buffering=1)
            if c.sample_trace_file
            else None
        )
        model = self.ddp or self.model
        model.train()
        fail_after = int(os.environ.get(FAIL_AFTER_STEP_ENV, "0") or 0)
        accum = c.gradient_accumulation_steps
        progress = None
        if self.ctx.is_main and not c.disable_tqdm:
            from tqdm.auto import tqdm

            progress = tqdm(total=self.total_steps, initial=self.global_step, desc="train", unit="step", dynamic_ncols=True)
        window_loss, window_steps, window_samples, window_start = 0.0, 0, 0, time.perf_counter()
        done = self.global_step >= self.total_steps
        while not done and self.epoch < self.num_epochs:
            step_loss = 0.0
            for batch in self._start_batches():
                # a row group that could not be read (in a DataLoader worker), raised here with its own message
                raise_batch_error(batch, "; a run with --skip_bad_shards skips it")
                self._note_bad_row_groups(c.train_split, batch.get("bad_row_groups", ()))
                batch_index = batch["batch_index"]
                if batch_index != self.next_batch:
                    raise RuntimeError(f"data order broken: got batch {batch_index}, expected {self.next_batch}")
                group_start = (batch_index // accum) * accum
                group_size = min(accum, self.batches_per_epoch - group_start)
                last_in_group = batch_index - group_start == group_size - 1
                if trace is not None:
                    trace.write(json.dumps({"epoch": self.epoch, "batch": batch_index, "ids": batch["doc_ids"]}) + "\n")
                empty = not batch["doc_ids"]  # every row of it was in a skipped row group
                if empty and self.ddp is None:
                    loss = torch.zeros(())
                else:
                    # an empty batch under DDP still runs a backward (of zero) so the gradient all-reduce matches the other ranks
                    source = self._dummy_batch() if empty else batch
                    inputs = {k: source[k].to(self.ctx.device, non_blocking=True) for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
                    sync = contextlib.nullcontext() if (self.ddp is None or last_in_group) else self.ddp.no_sync()
                    with sync:
                        with torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                            loss = model(**inputs).loss
                            loss = loss * 0.0 if empty else loss / group_size
                        self.scaler.scale(loss).backward()
                step_loss += float(loss.detach())
                self.next_batch = batch_index + 1
                window_samples += len(batch["doc_ids"]) * self.ctx.world_size
                if not last_in_group:
                    continue
                # no gradient at all when every batch of the group was empty (skipped row groups, one process):
                # no optimizer step, but the schedule advances with global_step as usual
                if any(p.grad is not None for p in self.model.parameters()):
                    self.scaler.unscale_(self.optimizer)
                    if c.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.max_grad_norm)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
                window_loss += step_loss
                window_steps += 1
                step_loss = 0.0
                if self.next_batch == self.batches_per_epoch:
                    self.epoch, self.next_batch = self.epoch + 1, 0
                if progress is not None:
                    progress.update(1)
                if self.global_step % max(c.logging_steps, 1) == 0 or self.global_step == self.total_steps:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    self._log_train(window_loss / window_steps, window_samples / elapsed, progress)
                    window_loss, window_steps, window_samples, window_start = 0.0, 0, 0, time.perf_counter()
                done = self.global_step >= self.total_steps
                epoch_ended = self.next_batch == 0
                if c.do_eval and ((c.eval_strategy == "steps" and self.global_step % c.eval_steps == 0)
                                  or (c.eval_strategy == "epoch" and epoch_ended)):
                    self.evaluate()
                if (c.save_steps and self.global_step % c.save_steps == 0) or (not c.save_steps and epoch_ended) or done:
                    self.save_checkpoint()
                if fail_after and self.global_step == fail_after:
                    raise RuntimeError(f"{FAIL_AFTER_STEP_ENV}={fail_after}: injected failure after step {fail_after}")
                if self._should_stop():
                    if not ((c.save_steps and self.global_step % c.save_steps == 0) or (not c.save_steps and epoch_ended) or done):
                        self.save_checkpoint()
                    raise Preempted(f"stopped by SIGTERM after step {self.global_step}; checkpoint saved")
                if done or epoch_ended:
                    break
        if progress is not None:
            progress.close()
        if trace is not None:
            trace.close()

    def _dummy_batch(self) -> dict[str, Any]:
        """One empty document (special tokens only), for the zero-weight step of an empty batch under DDP."""
        return collate([self.features.train_example("", 0, [], [], self.epoch)], self.pad_token_id)

    def _log_train(self, loss: float, samples_per_second: float, progress: Any) -> None:
        lr = self.scheduler.get_last_lr()[0]
        if progress is not None:
            progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{samples_per_second:.1f}")
        if self.ctx.is_main:
            log.info("step %d epoch %d loss %.4f lr %.3e samples/s %.1f", self.global_step, self.epoch, loss, lr, samples_per_second)
            self.writer.add_scalar("train/loss", loss, self.global_step)
            self.writer.add_scalar("train/learning_rate", lr, self.global_step)
            self.writer.add_scalar("train/samples_per_second", samples_per_second, self.global_step)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, Any]:
        c = self.config
        skipped: list[Any] | None = [] if c.skip_bad_shards else None
        metrics = evaluate_split(
            self.model,
            self.eval_units,
            self.features,
            self.label_names,
            views=self.views,
            batch_size=c.per_device_eval_batch_size,
            device=self.ctx.device,
            pad_token_id=self.pad_token_id,
            autocast_dtype=self.autocast_dtype,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            limits=self.data_limits(c.eval_split),
            skipped=skipped,
        )
        self._note_bad_row_groups(c.eval_split, [problem.to_dict() for problem in skipped or ()])
        self._sync_bad_row_groups()
        metrics.update(step=self.global_step, epoch=self.epoch, split=c.eval_split, eval_views=str(self.views))
        self.eval_history.append(metrics)
        value = metrics[c.metric_for_best_model]
        better = self.best_metric is None or (value < self.best_metric if c.metric_for_best_model == "loss" else value > self.best_metric)
        if better:
            self.best_metric, self.best_step = value, self.global_step
            if self.ctx.is_main and c.load_best_model_at_end:
                self._save_model(spanwise_io.join(c.output_dir, "best_model"))
        if self.ctx.is_main:
            log.info(
                "eval step %d: loss %.4f accuracy %.4f macro_f1 %.4f mcc %.4f",
                self.global_step, metrics["loss"], metrics["accuracy"], metrics["macro_f1"], metrics["mcc"],
            )
            for name in ("loss", "accuracy", "macro_f1", "mcc"):
                self.writer.add_scalar(f"eval/{name}", metrics[name], self.global_step)
            if self.hypertune is not None:
                self.hypertune.report(value, self.global_step)
            self._write_json(EVAL_RESULTS_NAME, self.eval_results())
            self.writer.sync()
        self._barrier()
        return metrics

    def eval_results(self) -> dict[str, Any]:
        return {
            "metric_for_best_model": self.config.metric_for_best_model,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "final": self.eval_history[-1] if self.eval_history else None,
            "history": self.eval_history,
            "data_problems": self.data_problems(),
        }

    # ------------------------------------------------------------------ output
    def _write_json(self, name: str, payload: Any) -> None:
        data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode("utf-8")
        spanwise_io.write_bytes(spanwise_io.join(self.config.output_dir, name), data)

    def _save_model(self, target: str) -> None:
        """save_pretrained model + tokenizer + run config to ``target`` (local or gs://)."""
        if spanwise_io.is_remote(target):
            with tempfile.TemporaryDirectory() as tmp:
                self._save_model_local(tmp)
                spanwise_io.upload_dir(tmp, target)
        else:
            self._save_model_local(target)

    def _save_model_local(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        with open(os.path.join(directory, RUN_CONFIG_NAME), "w", encoding="utf-8") as handle:
            json.dump(self.run_config(), handle, indent=2, sort_keys=True, default=str)

    def save(self) -> None:
        c = self.config
        self._sync_bad_row_groups()
        if self.ctx.is_main:
            best_dir = spanwise_io.join(c.output_dir, "best_model")
            if c.load_best_model_at_end and self.best_step is not None and spanwise_io.exists(best_dir):
                from transformers import AutoModelForSequenceClassification

                best = AutoModelForSequenceClassification.from_pretrained(local_model_path(best_dir))
                self.model.load_state_dict(best.state_dict())
            self._save_model(c.output_dir)
            # a prune that a kill interrupted (after a checkpoint's COMPLETE) is caught up at the
            # next save, or here when no save followed (the run resumed at its last step)
            ckpt.prune_checkpoints(c.resolved_checkpoint_dir, c.save_total_limit)
            self._write_json(PREPROCESS_MANIFEST_NAME, self.manifest)
            if self.eval_history:
                self._write_json(EVAL_RESULTS_NAME, self.eval_results())
            if self.writer is not None:
                final = self.eval_history[-1] if self.eval_history else {}
                hparams = {k: v for k, v in self.config.to_dict().items() if isinstance(v, (int, float, str, bool))}
                hparams["seq_func_params"] = " ".join(map(str, self.config.seq_func_params))
                self.writer.add_hparams(
                    hparams, {f"hparam/{k}": final[k] for k in ("accuracy", "macro_f1", "mcc", "loss") if k in final}, run_name="."
                )
                self.writer.sync()
        self._barrier()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        shutdown_distributed()


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train and/or evaluate as the flags say; returns the eval results (empty without eval)."""
    config = parse_args(argv)
    trainer = Trainer(config)
    previous = signal.getsignal(signal.SIGTERM)

    def request_stop(signum: int, frame: Any) -> None:
        log.warning("SIGTERM: checkpointing after the current step, then exiting")
        trainer.stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    def is_main() -> bool:  # RANK may come from Vertex AI's CLUSTER_SPEC during setup
        return int(os.environ.get("RANK", "0")) == 0

    try:
        trainer.setup()
        if config.do_train:
            trainer.train()
        elif config.do_eval:
            trainer.evaluate()
        trainer.save()
        results = trainer.eval_results() if trainer.eval_history else {}
    except Preempted:
        if is_main():
            notify_webhook(config.notify_webhook_env, run_summary(config.task_name, "preempted (checkpoint saved)", config.output_dir, _last(trainer)))
        raise
    except BaseException as error:
        if is_main():
            message = f"{type(error).__name__}: {error}"[:500]
            notify_webhook(config.notify_webhook_env, run_summary(config.task_name, "failed", config.output_dir, _last(trainer), message))
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        trainer.close()
    if is_main():
        notify_webhook(config.notify_webhook_env, run_summary(config.task_name, "finished", config.output_dir, _last(trainer)))
    return results


def _last(trainer: Trainer) -> dict[str, Any] | None:
    return trainer.eval_history[-1] if trainer.eval_history else None


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():  # log lines above the progress bar, not through it
            results = run(argv)
    except Preempted as stop:
        log.warning("%s; run the same command again to resume", stop)
        return 143
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    final = results.get("final") if results else None
    if final and int(os.environ.get("RANK", "0")) == 0:
        print(
            f"\n{final['split']}: accuracy {final['accuracy']:.4f}  macro-F1 {final['macro_f1']:.4f}  "
            f"MCC {final['mcc']:.4f}  loss {final['loss']:.4f}  ({final['num_examples']} documents, eval_views {final['eval_views']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
