"""``python -m trainer.task``: fine-tune a sequence classifier on preprocessed shards.

Set-up / train / evaluate / predict / save as methods of one ``Trainer``. The training loop
reads in one sitting, as nanoGPT's does: forward and backward, optimizer step, log, evaluate,
save, stop; the special cases (empty batches under DDP, skipped row groups, the accumulation
group, SIGTERM and Ctrl-C) live in the named helpers it calls.

What the run decides before its first step is not here: which shards, how many steps, and
whether ``--output_dir`` is resumed are ``trainer.plan.RunPlan``'s; the evaluations, the best
one and early stopping are ``trainer.tracking.EvalTracker``'s; the loss and padding counts between
log lines and per epoch are ``trainer.meters``'; the model side (views, pooling,
loading and saving the classifier with its ``spanwise`` record) is the ``modeling`` package's.

What comes from libraries: the flags parser (transformers' ``HfArgumentParser``), the model,
tokenizer and schedules from transformers; AdamW, autocast, the gradient scaler, DDP,
torch.compile and the process group from torch; TensorBoard's SummaryWriter; tqdm. What is ours:
the streaming data order (``trainer.data``), checkpoints with the exact data position
(``trainer.checkpoint``), the resume rules (``trainer.resume``), the checks before the first
step (``trainer.preflight``), stopping on signals (``trainer.stopping``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

import spanwise_io
from modeling.classifier import head_parameter_names, load_classifier, local_model_path, save_classifier, start_classifier
from modeling.features import FeatureBuilder, SpecialTokenTemplate, parse_views
from modeling.label_space import LabelSpace
from modeling.packing import PackedForward
from modeling.pooling import batch_inputs, model_input_names, pooled_forward
from schemas.manifest import check_compatible, problem_type_of, read_manifest
from tokenization.seq_len import validate_seq_config
from tokenization.tokenizer import load_tokenizer, tokenizer_identity
from trainer import checkpoint as ckpt
from trainer.args import METRICS, TrainConfig, head_windows, parse_args
from trainer.cloud import HypertuneReporter, is_tuning_trial, notify_webhook, run_summary
from trainer.data import raise_batch_error, start_loader, worker_init_threads
from trainer.distributed import DistContext, init_distributed, shutdown_distributed
from trainer.evaluation import evaluate_split, render_predictions, score_documents
from trainer.meters import LossMeter, PaddingMeter
from trainer.optimization import build_optimizer, build_scheduler, optimizer_step
from trainer.plan import RunPlan, protected_steps
from trainer.preflight import check_device, check_metric, check_model_fits, check_splits
from trainer.stopping import Stopped, StopSignals
from trainer.tensorboard_logs import NullLogger, TensorBoardLogger
from trainer.tracking import EvalTracker

__all__ = ["Trainer", "Stopped", "Preempted", "run", "main", "rank_trace_path", "load_classifier"]

log = logging.getLogger("trainer")
EVAL_RESULTS_NAME = "eval_results.json"
TRAIN_RESULTS_NAME = "train_results.json"  # per-epoch statistics of the training batches (padding fraction)
PREDICT_RESULTS_NAME = "predict_results.tsv"
PREPROCESS_MANIFEST_NAME = "preprocess_manifest.json"
# Test hook: raise after this optimizer step, to check that an exception-interrupted run resumes.
FAIL_AFTER_STEP_ENV = "SPANWISE_TEST_FAIL_AFTER_STEP"
Preempted = Stopped  # the name of earlier versions


def rank_trace_path(path: str, rank: int, world_size: int) -> str:
    """The ``--sample_trace_file`` of one rank: ``trace.jsonl`` -> ``trace.rank1.jsonl`` when world size > 1."""
    if world_size <= 1:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.rank{rank}{ext}"


class Trainer:
    """One run: ``setup()``, then ``train()`` + ``save()`` and/or ``evaluate()``, ``predict()``."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.signals = StopSignals()
        self.global_step = 0
        self.epoch = 0
        self.next_batch = 0
        self.evals = EvalTracker(config.metric_for_best_model, patience=config.early_stopping_patience,
                                 threshold=config.early_stopping_threshold, load_best_at_end=config.load_best_model_at_end)
        self.writer: Any = None
        self.hypertune: HypertuneReporter | None = None
        self.plan: RunPlan | None = None  # made in setup(): shards, schedule, resume decision
        self._checkpoint_step: int | None = None
        self.padding = PaddingMeter()
        self.epoch_stats: list[dict[str, Any]] = []  # train_results.json: one entry per epoch trained

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Everything that can fail, checked before the first step; then the model and optimizer."""
        from transformers import AutoConfig

        c = self.config
        self.ctx: DistContext = init_distributed(c.use_cpu)
        check_device(c, self.ctx.device)
        self._set_tf32()
        self.manifest = read_manifest(c.data_dir)
        tokenizer_source = c.tokenizer_name or c.model_name
        self.tokenizer = load_tokenizer(tokenizer_source, trust_remote_code=c.trust_remote_code)
        check_compatible(self.manifest, tokenizer_identity(self.tokenizer, tokenizer_source))
        self.seq_config = validate_seq_config(c.seq_len_func, c.seq_func_params, c.max_seq_length, self.tokenizer)
        self.views = parse_views(c.eval_views)
        self.train_views = parse_views(c.train_views)
        label_map = self.manifest["label_map"]
        self.label_names = [name for name, _ in sorted(label_map.items(), key=lambda item: item[1])]
        self.label_space = LabelSpace(tuple(self.label_names), problem_type_of(self.manifest), c.threshold)
        check_metric(c, self.label_space)
        self.model_path = local_model_path(c.model_name)
        model_config = AutoConfig.from_pretrained(self.model_path, trust_remote_code=c.trust_remote_code)
        if hasattr(model_config, "encoder_config"):  # a saved whole-document model: its encoder takes the windows
            model_config = model_config.encoder_config()
        check_model_fits(c, model_config, self.tokenizer, self.label_names)
        self.features = FeatureBuilder(
            self.seq_config, SpecialTokenTemplate.from_tokenizer(self.tokenizer), c.seed, fixed_spans=c.fixed_spans,
            max_chunks=c.max_chunks,
        )
        self.pad_token_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        self.plan = plan = RunPlan(c, self.ctx, self.manifest)
        plan.scan()
        check_splits(c, self.manifest, plan.scans)
        plan.take_units()
        self.autocast_dtype = torch.bfloat16 if c.bf16 else torch.float16 if c.fp16 else None
        if c.do_train:
            plan.plan_training(self.features, self.pad_token_id, self.train_views)
            plan.decide_resume(self._barrier)
            if plan.finished_run:
                return

        self._load_model()
        if c.do_train:
            self._setup_optimization()
            self._apply_resume()
            self.signals.use_group(self.ctx.distributed)
        if self.ctx.is_main:
            purge = self.global_step + 1 if self.global_step else None  # a resumed run replaces what followed its checkpoint
            self.writer = TensorBoardLogger(c.resolved_logging_dir, purge_step=purge) if c.report_to == "tensorboard" else NullLogger()
            if is_tuning_trial():
                self.hypertune = HypertuneReporter(c.hypertune_metric_tag or c.metric_for_best_model)
            if c.do_train:
                self.writer.add_text("run_config", "```\n" + json.dumps(self.run_config(), indent=2, default=str) + "\n```",
                                     self.global_step)

    def _load_model(self) -> None:
        """The classifier on the device (new head seeded), DDP-wrapped and compiled as the flags say."""
        c = self.config
        torch.manual_seed(c.seed)  # the new classifier head (or head over the windows) is initialised from this
        self.model = start_classifier(
            self.model_path,
            pooling=c.pooling,
            max_windows=head_windows(c),
            head_layers=c.head_layers,
            head_reduce=c.head_reduce,
            num_labels=len(self.label_names),
            problem_type=self.label_space.problem_type,
            id2label=dict(enumerate(self.label_names)),
            label2id=dict(self.manifest["label_map"]),
            trust_remote_code=c.trust_remote_code,
            ignore_mismatched_sizes=c.ignore_mismatched_sizes,
        ).to(self.ctx.device)
        if c.gradient_checkpointing:  # (transformers 5 renamed gradient_checkpointing_enable)
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.ddp: torch.nn.Module | None = None
        # --pack_views: the model behind a forward that also takes packed rows (a ValueError for a model it cannot run)
        trained: torch.nn.Module = PackedForward(self.model) if c.pack_views and c.do_train else self.model
        if self.ctx.distributed:
            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(trained, device_ids=device_ids)
        self.input_names = model_input_names(self.model)  # without token_type_ids for ModernBERT and the like
        # what the training loop calls; evaluation and saving use the plain model
        self.train_model: torch.nn.Module = self.ddp or trained
        if c.torch_compile:
            self.train_model = torch.compile(self.train_model, mode=c.torch_compile_mode, backend=c.torch_compile_backend or "inductor")

    def _set_tf32(self) -> None:
        """``--tf32``: TF32 matmuls and convolutions on a GPU (on by default, as before the flag)."""
        if self.ctx.device.type != "cuda":
            return
        enabled = True if self.config.tf32 is None else self.config.tf32
        if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
            torch.backends.cuda.matmul.fp32_precision = "tf32" if enabled else "ieee"
            torch.backends.cudnn.conv.fp32_precision = "tf32" if enabled else "ieee"
        else:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled

    def _setup_optimization(self) -> None:
        c = self.config
        self.optimizer = build_optimizer(
            self.model.named_parameters(), optim=c.optim, learning_rate=c.learning_rate, weight_decay=c.weight_decay,
            betas=(c.adam_beta1, c.adam_beta2), eps=c.adam_epsilon,
            head_names=head_parameter_names(self.model), head_learning_rate=c.head_learning_rate,
        )
        self.scheduler = build_scheduler(self.optimizer, c.lr_scheduler_type, self.plan.num_warmup_steps, self.plan.total_steps)
        self.scaler = torch.amp.GradScaler(self.ctx.device.type, enabled=c.fp16)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.meter = LossMeter(self.ctx.device)

    def run_config(self) -> dict[str, Any]:
        """What made this model: flags, seq function with budgets, data, world size."""
        config: dict[str, Any] = {
            "args": self.config.to_dict(),
            "seq_len": self.seq_config.to_dict(),
            "label_names": self.label_names,
            "problem_type": self.label_space.problem_type,
            "world_size": self.ctx.world_size,
            "data_manifest_created_at": self.manifest.get("created_at"),
            "data_problems": self.plan.problems.to_dict(),
            "tokenizer": tokenizer_identity(self.tokenizer, self.config.tokenizer_name or self.config.model_name),
            "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        }
        if self.config.do_train:
            config["result_args"] = self.plan.result_args
        if self.label_space.multi_label:
            config["threshold"] = self.label_space.threshold
            # the decision threshold with the best micro-F1 in the saved model's evaluation (None: not evaluated)
            config["best_threshold"] = (self.final_metrics() or {}).get("best_threshold")
        return config

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
            **self.evals.state(),
            "bad_row_groups": json.dumps(self.plan.problems.records()),
            "padding": json.dumps({"epoch": self.padding.epoch, "epochs": self.epoch_stats}),
            "plan": self.plan.signature(),
            "result_args": json.dumps(self.plan.result_args, default=str),
        }

    def save_checkpoint(self) -> str | None:
        """Write the checkpoint of this step (main rank; every rank takes part in the RNG gather)."""
        state = self._state()
        path = None
        if self.ctx.is_main:
            path = ckpt.save_checkpoint(
                self.config.resolved_checkpoint_dir, self.global_step, self.model, state, self.config.save_total_limit,
                protected_steps(self.config, self.evals.best_step),
            )
            log.info("checkpoint %s (epoch %d, batch %d)", path, self.epoch, self.next_batch)
            self.writer.sync()
        self._checkpoint_step = self.global_step
        self._barrier()
        return path

    def _apply_resume(self) -> None:
        """Continue from the checkpoint chosen by ``RunPlan.decide_resume``: weights, optimizer, RNG, data position."""
        if self.plan.resume_from is None:
            return
        path, state = self.plan.resume_from
        ckpt.load_weights(path, self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"][self.ctx.rank]
        torch.set_rng_state(rng["cpu"])
        if torch.cuda.is_available() and rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.global_step, self.epoch, self.next_batch = state["global_step"], state["epoch"], state["next_batch"]
        self.evals.load_state(state)
        padding = json.loads(state.get("padding", "null") or "null")
        if padding:
            self.padding.epoch, self.epoch_stats = list(padding["epoch"]), list(padding["epochs"])
        self.plan.problems.restore(json.loads(state.get("bad_row_groups", "[]")))
        self._checkpoint_step = self.global_step
        if self.ctx.is_main:
            log.info("resumed from %s: step %d, epoch %d, batch %d", path, self.global_step, self.epoch, self.next_batch)

    # ------------------------------------------------------------------ training
    @property
    def training_done(self) -> bool:
        return self.global_step >= self.plan.total_steps or self.evals.stopped_early

    def train(self) -> None:
        """The loop: forward and backward per batch; at the end of each accumulation group an
        optimizer step, then log, evaluate, save and stop as the flags and signals say."""
        c = self.config
        model = self.train_model
        model.train()
        self.signals.armed = True
        with self._sample_trace() as trace, self._progress() as progress:
            while not self.training_done:
                for batch in self._epoch_batches():
                    trace(batch)
                    self.padding.add(batch)
                    self.meter.add_batch(self._forward_backward(model, batch), len(batch["doc_ids"]) * self.ctx.world_size)
                    if not self._ends_group(batch):
                        continue
                    self._optimizer_step()
                    progress.update(1)
                    if self.global_step % c.logging_steps == 0 or self.training_done:
                        self._log_train(progress)
                    if self._evaluation_due():
                        self.evaluate()
                    if self._checkpoint_due():
                        self.save_checkpoint()
                    self._stop_if_requested()
                    if self.training_done or self.next_batch == 0:
                        break
        self.signals.armed = False
        self.signals.finish()
        if self.padding.epoch_started():  # a run that stops inside an epoch (--max_steps): its part of the epoch
            self._end_epoch(self.epoch, partial=True)
        if c.do_eval and not self.evals.evaluated_at(self.global_step):
            self.evaluate()  # every run ends evaluated

    def _epoch_batches(self) -> Iterator[dict[str, Any]]:
        """This epoch's batches from the position to resume at, checked, with skipped row groups noted."""
        c = self.config
        self.plan.dataset.set_epoch(self.epoch, self.next_batch)
        loader = DataLoader(
            self.plan.dataset,
            batch_size=None,
            num_workers=c.dataloader_num_workers,
            worker_init_fn=worker_init_threads if c.dataloader_num_workers else None,
            # a generator of its own, so creating the loader does not advance the global RNG
            generator=torch.Generator().manual_seed(c.seed),
            pin_memory=self.ctx.device.type == "cuda",
            prefetch_factor=4 if c.dataloader_num_workers else None,
        )
        for batch in start_loader(loader) if c.dataloader_num_workers else iter(loader):
            # a row group that could not be read (in a DataLoader worker), raised here with its own message
            raise_batch_error(batch, "; a run with --skip_bad_shards skips it")
            self.plan.problems.note(c.train_split, batch.get("bad_row_groups", ()))
            if batch["batch_index"] != self.next_batch:
                raise RuntimeError(f"data order broken: got batch {batch['batch_index']}, expected {self.next_batch}")
            yield batch

    def _forward_backward(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Loss / group size, backward; returns the detached loss (on the device: no sync).

        A batch whose rows were all in skipped row groups is empty: with one process it is a
        no-op; under DDP it still runs a backward, of zero on a dummy document, so the gradient
        all-reduce matches the other ranks'. DDP syncs gradients on the group's last batch only.
        """
        size, last = self.plan.group_of(batch["batch_index"], self.epoch)
        empty = not batch["doc_ids"]
        if empty and self.ddp is None:
            return torch.zeros((), device=self.ctx.device)
        source = self._dummy_batch() if empty else batch
        packed = "segment_ids" in source  # --pack_views: the packed rows' layout goes to PackedForward
        names = (*self.input_names, "labels", *(_PACKED_INPUTS if packed else ()))
        inputs = batch_inputs(source, names, self.ctx.device)
        sync = contextlib.nullcontext() if (self.ddp is None or last) else self.ddp.no_sync()
        with sync:
            with torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                labels = inputs.pop("labels")
                if "owners" in source:  # --train_views: the views pooled (logits, or the head), one loss per document
                    owners = source["owners"].to(self.ctx.device, non_blocking=True)
                    logits = pooled_forward(model, inputs, owners, len(source["doc_ids"]), self.config.pooling)
                else:  # one view per document (packed rows: PackedForward gives each view's logits)
                    logits = model(**inputs).logits
                # cross-entropy, or BCE per label for label sets (LabelSpace.loss, as the model's own loss)
                loss = self.label_space.loss(logits, labels)
                loss = loss * 0.0 if empty else loss / size
            self.scaler.scale(loss).backward()
        return loss.detach()

    def _dummy_batch(self) -> dict[str, Any]:
        """One empty document (special tokens only), for the zero-weight step of an empty batch under DDP."""
        label = np.zeros(len(self.label_names), dtype=np.int8) if self.label_space.multi_label else 0
        batch = self.plan.dataset.collate_examples([self.features.train_example("", label, [], [], self.epoch)])
        if self.train_views != 1:  # the pooled path, as the other ranks' batches take it
            batch["owners"] = torch.zeros(1, dtype=torch.long)
        return batch

    def _ends_group(self, batch: dict[str, Any]) -> bool:
        """Move the data position past ``batch``; True when its accumulation group is complete."""
        self.next_batch = batch["batch_index"] + 1
        return self.plan.group_of(batch["batch_index"], self.epoch)[1]

    def _optimizer_step(self) -> None:
        """One optimizer step (skipped fp16 steps leave the schedule alone), and the position after it."""
        optimizer_step(self.optimizer, self.scheduler, self.scaler, self.parameters, self.config.max_grad_norm)
        self.global_step += 1
        self.meter.steps += 1
        if self.next_batch == self.plan.batches_in(self.epoch):
            self._end_epoch(self.epoch)
            self.epoch, self.next_batch = self.epoch + 1, 0

    def _end_epoch(self, epoch: int, partial: bool = False) -> None:
        """The epoch's batch statistics (all ranks together): logged, to TensorBoard and train_results.json."""
        entry = self.padding.end_epoch(epoch, self.global_step, partial=partial,
                                       sum_ranks=self._sum_over_ranks if self.ctx.distributed else None)
        self.epoch_stats.append(entry)
        if self.ctx.is_main:
            log.info("epoch %d%s: %d batches, %d documents, padding fraction %.4f (%d of %d tokens)", epoch,
                     " (part)" if partial else "", entry["batches"], entry["documents"], entry["padding_fraction"],
                     entry["padded_tokens"] - entry["real_tokens"], entry["padded_tokens"])
            self.writer.add_scalar("train/epoch_padding_fraction", entry["padding_fraction"], self.global_step)

    def _sum_over_ranks(self, counts: list[int]) -> list[int]:
        totals = torch.tensor(counts, dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(totals)
        return [int(x) for x in totals.tolist()]

    def _evaluation_due(self) -> bool:
        c = self.config
        if not c.evaluates_during_training:
            return False
        if c.eval_strategy == "steps":
            return self.global_step % c.eval_steps == 0
        return self.next_batch == 0  # epoch

    def _checkpoint_due(self) -> bool:
        c = self.config
        new_best = self.evals.new_best_at(self.global_step)
        return (
            self.training_done
            or (c.save_strategy == "steps" and self.global_step % c.save_steps == 0)
            or (c.save_strategy == "epoch" and self.next_batch == 0)
            or (new_best and (c.save_strategy == "best" or c.load_best_model_at_end))
        )

    def _stop_if_requested(self) -> None:
        """The test hook's failure, or a stop all ranks agreed on: checkpoint (if not yet), then ``Stopped``."""
        fail_after = int(os.environ.get(FAIL_AFTER_STEP_ENV, "0") or 0)
        if fail_after and self.global_step == fail_after:
            raise RuntimeError(f"{FAIL_AFTER_STEP_ENV}={fail_after}: injected failure after step {fail_after}")
        signum = self.signals.agreed()
        if signum is None:
            return
        path = None
        if self._checkpoint_step != self.global_step:
            path = self.save_checkpoint()
        elif self.ctx.is_main:
            path = ckpt.checkpoint_of_step(self.config.resolved_checkpoint_dir, self.global_step)
        self.signals.finish()
        raise self.signals.stopped(signum, self.global_step, path)

    @contextlib.contextmanager
    def _sample_trace(self) -> Iterator[Callable[[dict[str, Any]], None]]:
        """``--sample_trace_file``: one line per batch, line-buffered, so the trace of a run that is
        killed, stopped or fails is complete up to the batch it was training."""
        c = self.config
        if not c.sample_trace_file:
            yield lambda batch: None
            return
        path = rank_trace_path(c.sample_trace_file, self.ctx.rank, self.ctx.world_size)
        with open(path, "a", encoding="utf-8", buffering=1) as handle:
            yield lambda batch: handle.write(
                json.dumps({"epoch": self.epoch, "batch": batch["batch_index"], "ids": batch["doc_ids"]}) + "\n"
            )

    @contextlib.contextmanager
    def _progress(self) -> Iterator[Any]:
        """A tqdm bar on the main rank (a stand-in elsewhere or with ``--disable_tqdm``)."""
        if not self.ctx.is_main or self.config.disable_tqdm:
            yield _NoProgress()
            return
        from tqdm.auto import tqdm

        bar = tqdm(total=self.plan.total_steps, initial=self.global_step, desc="train", unit="step", dynamic_ncols=True)
        try:
            yield bar
        finally:
            bar.close()

    def _log_train(self, progress: Any) -> None:
        loss, samples_per_second = self.meter.read()
        padding = self.padding.read_interval()
        lr = self.scheduler.get_last_lr()[0]
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{samples_per_second:.1f}")
        if self.ctx.is_main:
            log.info("step %d epoch %d loss %.4f lr %.3e samples/s %.1f padding %.3f", self.global_step, self.epoch, loss, lr,
                     samples_per_second, padding)
            self.writer.add_scalar("train/padding_fraction", padding, self.global_step)
            self.writer.add_scalar("train/loss", loss, self.global_step)
            self.writer.add_scalar("train/learning_rate", lr, self.global_step)
            if self.config.head_learning_rate is not None:  # the last group: the new layers' (trainer.optimization)
                self.writer.add_scalar("train/head_learning_rate", self.scheduler.get_last_lr()[-1], self.global_step)
            self.writer.add_scalar("train/samples_per_second", samples_per_second, self.global_step)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, Any]:
        c = self.config
        skipped: list[Any] | None = [] if c.skip_bad_shards else None
        metrics = evaluate_split(
            self.model,
            self.plan.eval_units,
            self.features,
            self.label_space,
            views=self.views,
            batch_size=c.per_device_eval_batch_size,
            device=self.ctx.device,
            pad_token_id=self.pad_token_id,
            autocast_dtype=self.autocast_dtype,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            limits=self.plan.limits(c.eval_split),
            skipped=skipped,
            num_workers=c.dataloader_num_workers,
            pooling=c.pooling,
        )
        self.plan.problems.note(c.eval_split, [problem.to_dict() for problem in skipped or ()])
        self.plan.problems.sync()
        metrics.update(step=self.global_step, epoch=self.epoch, split=c.eval_split, eval_views=str(self.views), pooling=c.pooling)
        value = self.evals.add(metrics, may_stop=c.do_train and self.global_step < self.plan.total_steps,
                               announce=self.ctx.is_main)
        if self.ctx.is_main:
            names = ("loss", "micro_f1", "macro_f1", "exact_match", "best_threshold") if self.label_space.multi_label \
                else ("loss", "accuracy", "macro_f1", "mcc")
            log.info("eval step %d: %s", self.global_step, " ".join(f"{name} {metrics[name]:.4f}" for name in names))
            for name in names:
                self.writer.add_scalar(f"eval/{name}", metrics[name], self.global_step)
            if self.hypertune is not None:
                self.hypertune.report(value, self.global_step)
            self._write_json(EVAL_RESULTS_NAME, self.eval_results())
            self.writer.sync()
        self._barrier()
        return metrics

    def final_metrics(self) -> dict[str, Any] | None:
        """The evaluation of the saved model: the best one with ``--load_best_model_at_end``, else the last."""
        return self.evals.final()

    def eval_results(self) -> dict[str, Any]:
        return self.evals.results(self.plan.problems.to_dict())

    def predict(self) -> str:
        """``--do_predict``: the split's predictions into ``<output_dir>/predict_results.tsv``."""
        c = self.config
        doc_ids, _, logits = score_documents(
            self.model, self.plan.test_units, self.features, views=self.views, batch_size=c.per_device_eval_batch_size,
            device=self.ctx.device, pad_token_id=self.pad_token_id, autocast_dtype=self.autocast_dtype,
            rank=self.ctx.rank, world_size=self.ctx.world_size, limits=self.plan.limits(c.test_split),
            skipped=[] if c.skip_bad_shards else None, num_workers=c.dataloader_num_workers, pooling=c.pooling,
        )
        path = spanwise_io.join(c.output_dir, PREDICT_RESULTS_NAME)
        if self.ctx.is_main:
            spanwise_io.write_bytes(path, render_predictions(path, doc_ids, logits, self.label_space))
            log.info("predictions of split %r (%d documents): %s", c.test_split, len(doc_ids), path)
        self._barrier()
        return path

    # ------------------------------------------------------------------ output
    def _write_json(self, name: str, payload: Any) -> None:
        data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode("utf-8")
        spanwise_io.write_bytes(spanwise_io.join(self.config.output_dir, name), data)

    def _load_best(self) -> None:
        """``--load_best_model_at_end``: the best checkpoint's weights become the model's."""
        if not self.config.load_best_model_at_end or self.evals.best_step is None or self.evals.best_step == self.global_step:
            return
        path = ckpt.checkpoint_of_step(self.config.resolved_checkpoint_dir, self.evals.best_step)
        if path is None:
            log.warning("--load_best_model_at_end: no checkpoint of the best step %d is left; saving the last model", self.evals.best_step)
            return
        ckpt.load_weights(path, self.model)
        if self.ctx.is_main:
            log.info("--load_best_model_at_end: the model of step %d (%s %.4f), from %s", self.evals.best_step,
                     self.config.metric_for_best_model, self.evals.best_metric, path)

    def save(self) -> None:
        """The final model (the best one with ``--load_best_model_at_end``), run_config.json and the results."""
        c = self.config
        self.plan.problems.sync()
        self._load_best()
        if self.ctx.is_main:
            save_classifier(self.model, self.tokenizer, c.output_dir, self.run_config(), self.manifest)
            # a prune that a kill interrupted (after a checkpoint's COMPLETE) is caught up at the
            # next save, or here when no save followed (the run resumed at its last step)
            ckpt.prune_checkpoints(c.resolved_checkpoint_dir, c.save_total_limit, protected_steps(c, self.evals.best_step))
            self._write_json(PREPROCESS_MANIFEST_NAME, self.manifest)
            if self.evals.history:
                self._write_json(EVAL_RESULTS_NAME, self.eval_results())
            if self.epoch_stats:
                self._write_json(TRAIN_RESULTS_NAME, {"epochs": self.epoch_stats})
            final = self.final_metrics() or {}
            hparams = {k: v for k, v in self.config.to_dict().items() if isinstance(v, (int, float, str, bool))}
            hparams["seq_func_params"] = " ".join(map(str, self.config.seq_func_params))
            self.writer.add_hparams(
                hparams, {f"hparam/{k}": final[k] for k in METRICS if k in final}, run_name="."
            )
            self.writer.sync()
        self._barrier()

    def _barrier(self) -> None:
        if self.ctx.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        shutdown_distributed()


_PACKED_INPUTS = ("position_ids", "segment_ids", "view_rows", "view_cols")


class _NoProgress:
    """tqdm's interface, doing nothing (other ranks, ``--disable_tqdm``)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, evaluate and predict as the flags say; returns the eval results (empty without eval)."""
    config = parse_args(argv)
    trainer = Trainer(config)

    def is_main() -> bool:  # RANK may come from Vertex AI's CLUSTER_SPEC during setup
        return int(os.environ.get("RANK", "0")) == 0

    def notify(status: str, error: str | None = None) -> None:
        if is_main():
            last = trainer.final_metrics()
            notify_webhook(config.notify_webhook_env, run_summary(config.task_name, status, config.output_dir, last, error))

    trainer.signals.install()
    try:
        trainer.setup()
        if trainer.plan.finished_run:
            log.info("%s holds this run, finished (%s): nothing to train. To train again: --overwrite_output_dir, "
                     "or a new --output_dir", config.output_dir, trainer.plan.finished_run)
            path = spanwise_io.join(config.output_dir, EVAL_RESULTS_NAME)
            return json.loads(spanwise_io.read_bytes(path)) if spanwise_io.exists(path) else {}
        if config.do_train:
            trainer.train()
            trainer.save()
        elif config.do_eval:
            trainer.evaluate()
        if config.do_predict:
            trainer.predict()
        results = trainer.eval_results() if trainer.evals.history else {}
    except Stopped as stop:
        notify("preempted (checkpoint saved)" if stop.exit_code == 143 else "stopped by Ctrl-C (checkpoint saved)")
        raise
    except BaseException as error:
        notify("failed", f"{type(error).__name__}: {error}"[:500])
        raise
    finally:
        trainer.signals.restore()
        trainer.close()
    notify("finished")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():  # log lines above the progress bar, not through it
            results = run(argv)
    except Stopped as stop:
        print(f"{stop}; run the same command again to resume", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("stopped at once by Ctrl-C, without a checkpoint of this step; the same command resumes from the "
              "last checkpoint", file=sys.stderr)
        return 130
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    final = results.get("final") if results else None
    if final and int(os.environ.get("RANK", "0")) == 0:
        shown = [(key, name) for key, name in (("accuracy", "accuracy"), ("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"),
                                               ("mcc", "MCC"), ("exact_match", "exact match"), ("loss", "loss")) if key in final]
        print(f"\n{final['split']}: " + "  ".join(f"{name} {final[key]:.4f}" for key, name in shown)
              + f"  ({final['num_examples']} documents, eval_views {final['eval_views']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
