"""Run: the shared training machinery. The stage script keeps its own visible loop; Run owns the boring parts.

    run = Run(cfg, name="thinker", metric="val_ppl", mode="min")
    model = run.setup(model, optimizer, train_set)       # device, resume or init_from, grad ckpt, compile, DDP
    for batch in run.batches(train_set):                 # epochs, exact skip on resume, progress bar, max_steps
        with run.micro_step():                           # autocast; DDP gradient sync only on the last micro-batch
            loss, stats = model(batch["inputs"], targets=batch["targets"])
            run.backward(loss)                           # 1/accum scaling, GradScaler under fp16
        if run.optimizer_step():                         # accumulation boundary: clip, NaN guard, step, schedule
            run.log(loss=loss, **stats)                  # host syncs only every log_freq steps
            run.maybe_evaluate(evaluate)
            run.maybe_checkpoint()
    if run.stopped:                                      # SIGTERM / Ctrl-C: the step is checkpointed; end (exit 0)
        sys.exit(0)
    run.finish(evaluate, final_weights={"thinker.pt": {...}})

Exactness: a checkpoint is taken only between optimizer steps and holds the data position (epoch, samples seen in
the epoch), every optimizer/scheduler/scaler and all RNG states. The data order is a pure function of
(seed, epoch, position) and evaluation runs under a forked RNG, so a killed-and-rerun run replays the same batches
with the same random numbers and (on CPU) ends with bitwise identical weights.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from omni import faults
from omni.config import to_dict
from omni.data.resumable import ResumableDataset
from omni.errors import InvalidInput, UserError
from omni.training import checkpoint as ckpt
from omni.training import distributed as dist
from omni.training import loader, run_dir, train_state
from omni.training.checkpoint import short_list
from omni.training.log import MetricWindow, RunLogger, fmt
from omni.training.nonfinite import NonFiniteGuard, step_left_finite_weights
from omni.training.schedule import accumulation_steps, warmup_cosine
from omni.training.stop import StopSignals

AMP_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class Run:
    def __init__(self, cfg, *, name: str, metric: str | None = None, mode: str = "min", force: bool = False,
                 trainable_only: bool = False):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.cfg, self.train, self.name = cfg, cfg.train, name
        self.metric, self.mode, self.force, self.trainable_only = metric, mode, force, trainable_only
        self.device = dist.local_device(self.train.device)
        if AMP_DTYPES[self.train.precision] == torch.float16 and self.device.type == "cpu":
            # CPU fp16 autocast is a trap: grouped/depthwise convolutions (HiFi-GAN's MSD) run for minutes per call
            # on some CPUs, and fp16 has no speed or memory use on CPU that bf16 lacks.
            raise UserError("train.precision=fp16 needs a CUDA device (this run is on the CPU, where fp16 autocast "
                            "can be extremely slow): use train.precision=bf16 or fp32")
        dist.init(self.device)
        self.rank, self.world_size = dist.rank(), dist.world_size()
        self.is_main = self.rank == 0
        self.run_dir = Path(self.train.save_dir)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock = run_dir.lock(self.run_dir)
        dist.barrier()
        self.logger = RunLogger(self.run_dir, enabled=self.is_main, tensorboard=self.train.tensorboard)
        stale = run_dir.remove_interrupted_writes(self.run_dir) if self.is_main else []
        if stale:
            self.info(f"removed {len(stale)} temporary file(s) left by a write that was interrupted: "
                      + short_list(stale))
        self.accum = accumulation_steps(self.train, self.world_size)
        if self.train.effective_batch is not None:
            self.info(f"effective batch {self.train.effective_batch} = {self.train.batch_size} x {self.accum} "
                      f"accumulation x {self.world_size} processes")
        self.amp_dtype = AMP_DTYPES[self.train.precision]
        if self.train.threads:
            torch.set_num_threads(self.train.threads)
        random.seed(self.train.seed)
        np.random.seed(self.train.seed)
        torch.manual_seed(self.train.seed)
        # Training position and bookkeeping; everything here goes into checkpoints.
        self.step = self.epoch = self.samples_in_epoch = 0
        self.best, self.last_eval, self.elapsed = None, None, 0.0
        # Checkpointed with the rest, so a replay after a crash counts each sample once.
        self.counters = {"bad_samples": 0, "nonfinite_steps": 0, "epoch_bad": 0, "epoch_seen": 0}
        self._micro = 0
        self._boundary = False
        self._stepped: set[str] = set()
        self._window = MetricWindow()
        self._last_saved_step = -1
        self.nonfinite = NonFiniteGuard(self.train.max_nonfinite_steps, self.info)
        self._stop = StopSignals(self.info)
        self.stopped = False  # a SIGTERM / Ctrl-C ended batches() early, after a checkpoint (omni/training/stop.py)
        self._clock = None
        self.info(f"run {name}: dir {self.run_dir}, device {self.device}, world size {self.world_size}, "
                  f"precision {self.train.precision}")
        if self.is_main:
            run_dir.write_json(self.run_dir / "config.json", to_dict(cfg))

    # ------------------------------------------------------------------ setup
    def setup(self, model: torch.nn.Module, optimizers, train_set: ResumableDataset, *,
              find_unused_parameters: bool = False) -> torch.nn.Module:
        """Move to device, restore (resume) or initialise (init_from), then grad checkpointing, compile and DDP.

        `optimizers` is one optimizer or a dict name -> optimizer (e.g. a GAN's "gen" and "disc"). Each gets the
        warmup+cosine schedule of cfg.train and, under fp16, its own GradScaler. Returns the model to call in the
        loop; `run.raw_model` stays the plain module (for evaluation and state dicts).
        """
        self.raw_model = model.to(self.device)
        self.optimizers = optimizers if isinstance(optimizers, dict) else {"main": optimizers}
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        steps_per_epoch = math.ceil(train_set.num_batches(self.world_size) / self.accum)
        if steps_per_epoch == 0:
            raise InvalidInput(f"the training set ({len(train_set)} samples) is smaller than one global batch "
                             f"({train_set.global_batch(self.world_size)})")
        self.max_steps = self.train.max_steps or self.train.max_epochs * steps_per_epoch
        self.schedulers = {n: warmup_cosine(o, warmup_steps=self.train.warmup_steps, max_steps=self.max_steps,
                                            lr=self.train.lr, min_lr=self.train.min_lr)
                           for n, o in self.optimizers.items()}
        fp16 = self.train.precision == "fp16"
        self.scalers = {n: torch.amp.GradScaler(self.device.type) for n in self.optimizers} if fp16 else {}
        n_params = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.info(f"model: {n_params:,} parameters, {n_train:,} trainable; {steps_per_epoch} steps/epoch "
                  f"({len(train_set)} samples, batch {self.train.batch_size} x accum {self.accum} "
                  f"x {self.world_size} processes); "
                  f"max_steps {self.max_steps}")
        found = train_state.find_resume_state(self)
        if found is not None:
            train_state.restore(self, *found)
            self._last_saved_step = self.step
        else:
            if getattr(self.cfg, "init_from", None):
                train_state.init_from(self, self.cfg.init_from)
            self.nonfinite.started(train_state.model_state(self))
        if self.train.grad_checkpointing:
            if not hasattr(model, "set_gradient_checkpointing"):
                raise InvalidInput(f"train.grad_checkpointing: {type(model).__name__} has no "
                                   "set_gradient_checkpointing")
            model.set_gradient_checkpointing(True)
        wrapped = torch.compile(model) if self.train.compile else model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(wrapped, device_ids=ids, find_unused_parameters=find_unused_parameters)
        self.model = wrapped
        self.model.train()
        return wrapped

    # ------------------------------------------------------------------ the loop
    def batches(self, dataset: ResumableDataset):
        """Micro-batches on the device, from the current position until max_steps."""
        self.logger.start_bar(self.max_steps, self.step, self.name)
        self._clock = time.perf_counter()
        with self._stop:
            yield from self._epochs(dataset)
            if not self.stopped:
                self._check_bad_fraction()  # a run that ends mid-epoch still reports (and checks) what it skipped
        self.elapsed += time.perf_counter() - self._clock
        self._clock = None
        self.logger.close()

    def _epochs(self, dataset: ResumableDataset):
        g = dataset.global_batch(self.world_size)
        # Also enter when resuming from a checkpoint taken at the last step of an epoch whose end-of-epoch
        # bookkeeping (counters, epoch += 1, checkpoint) a crash cut off: the loop below then just ends that epoch.
        while self.step < self.max_steps or self.samples_in_epoch >= dataset.num_batches(self.world_size) * g:
            dataset.set_position(epoch=self.epoch, skip_samples=self.samples_in_epoch, rank=self.rank,
                                 world_size=self.world_size)
            last = dataset.num_batches(self.world_size) - 1
            loaded_batches = iter(loader.training_loader(dataset, self.train, epoch=self.epoch, device=self.device))
            with loader.workers_killed_on_error(loaded_batches):
                for loaded in loaded_batches:
                    self._count_samples(loaded)
                    self.samples_in_epoch = (loaded.index + 1) * g
                    if loaded.batch is None:
                        continue
                    self._micro += 1
                    self._boundary = self._micro == self.accum or loaded.index == last
                    yield loader.to_device(loaded.batch, self.device)
                    if self._stop.requested and self._micro == 0:
                        loader.shut_down_workers(loaded_batches)
                        self._stop_now()
                        return
                    if self.step >= self.max_steps:
                        if loaded.index == last:
                            self._end_epoch()
                        break
                else:
                    self._end_epoch()
                    continue
            break

    def _count_samples(self, loaded) -> None:
        """Name every bad sample in the log as it is met; the fraction is checked per epoch."""
        self.counters["epoch_seen"] += loaded.size
        for message in loaded.bad:
            self.counters["bad_samples"] += 1
            self.counters["epoch_bad"] += 1
            self.info(f"skipped bad sample: {message}")

    def _check_bad_fraction(self) -> None:
        bad, seen = self.counters["epoch_bad"], self.counters["epoch_seen"]
        if bad:
            self.info(f"epoch {self.epoch}: skipped {bad} bad samples of {seen} (named above)")
        if bad > self.train.max_bad_fraction * max(1, seen):  # a data problem, not a bug: no traceback (exit 1)
            raise UserError(f"{bad} of {seen} samples of epoch {self.epoch} were bad (> train.max_bad_fraction="
                            f"{self.train.max_bad_fraction}); see 'skipped bad sample' lines in "
                            f"{self.logger.log_path}")

    def _end_epoch(self) -> None:
        if self._micro:  # the epoch's last micro-batches were all bad: step with what was accumulated
            self._boundary = True
            self.optimizer_step()
        self._check_bad_fraction()
        self.counters["epoch_bad"] = self.counters["epoch_seen"] = 0
        self.info(f"epoch {self.epoch} done at step {self.step}")
        self.epoch += 1
        self.samples_in_epoch = 0
        self.save_checkpoint()

    @contextlib.contextmanager
    def micro_step(self):
        """Autocast, and under DDP skip the gradient all-reduce except on the accumulation boundary."""
        sync = self._boundary or not isinstance(self.model, DistributedDataParallel)
        with (contextlib.nullcontext() if sync else self.model.no_sync()), self.autocast():
            yield

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def backward(self, loss: torch.Tensor, optimizer: str | None = None) -> None:
        loss = loss / self.accum
        scaler = self.scalers.get(optimizer or next(iter(self.optimizers)))
        (scaler.scale(loss) if scaler else loss).backward()

    def optimizer_step(self, optimizer: str | None = None) -> bool:
        """On the accumulation boundary: unscale, clip, skip if non-finite, step, schedule, zero grads.

        With several optimizers, name each one as it steps; the global step advances once all have stepped.
        Returns True when the global step advanced.
        """
        if not self._boundary:
            return False
        for n in [optimizer] if optimizer else list(self.optimizers):
            self._step_one(n)
            self._stepped.add(n)
        if self._stepped != set(self.optimizers):
            return False
        self._stepped.clear()
        faults.point("step")  # no-op unless OMNI_FAULT=step@n (crash tests)
        self._micro = 0
        self._boundary = False
        self.step += 1
        self.logger.advance_bar()
        return True

    def _step_one(self, name: str) -> None:
        opt, scaler = self.optimizers[name], self.scalers.get(name)
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        key = f"grad_norm_{name}" if len(self.optimizers) > 1 else "grad_norm"
        if not params:  # nothing to update (e.g. a GAN's discriminator during a generator-only warm-up)
            self._advance_schedule(name)
            self._window.add({key: 0.0})
            return
        if scaler:
            scaler.unscale_(opt)
        clip = self.train.grad_clip if self.train.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        # Host sync 1: the NaN/Inf guard has to know before stepping, so that a bad step is simply not applied.
        if not torch.isfinite(norm):
            self.nonfinite.nonfinite_step(f"non-finite gradients in {name}, update skipped", step=self.step,
                                          counters=self.counters)
        else:
            # Host sync 2: finite gradients can still give non-finite weights (a huge lr or weight decay, an
            # overflow in the optimizer state): check the tensors just updated (a sum each, see all_finite), and
            # undo such a step (omni/training/nonfinite.py says how).
            if step_left_finite_weights(lambda: scaler.step(opt) if scaler else opt.step(), params):
                self.nonfinite.finite_step()
            else:
                rewound = self.nonfinite.rewind(self.raw_model, self.optimizers, self.param_names)
                self.nonfinite.nonfinite_step(f"the update of {name} made weights non-finite; {rewound}",
                                              step=self.step, counters=self.counters)
        if scaler:
            scaler.update()
        opt.zero_grad(set_to_none=True)
        self._advance_schedule(name)
        self._window.add({key: norm})

    def _advance_schedule(self, name: str) -> None:
        with warnings.catch_warnings():  # a skipped update still advances the schedule, which torch warns about
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.schedulers[name].step()

    # ------------------------------------------------------------------ logging, evaluation, checkpoints
    def log(self, **metrics) -> None:
        """Accumulate this step's metrics on the device; every log_freq steps average, sync once and write."""
        self._window.add(metrics)  # grad norms are added once per optimizer per step, like the metrics
        self._window.steps += 1
        if self.step % self.train.log_freq and self.step != self.max_steps:
            return
        values = self._window.average()
        values["lr"] = self.optimizers[next(iter(self.optimizers))].param_groups[0]["lr"]
        values["epoch"] = self.epoch
        self.logger.metrics(self.step, values)
        self.logger.info(f"step {self.step}/{self.max_steps} " + " ".join(f"{k} {fmt(v)}" for k, v in values.items()))

    def info(self, message: str) -> None:
        self.logger.info(message)

    def maybe_evaluate(self, evaluate) -> dict | None:
        if self.step % self.train.val_freq == 0:
            return self.evaluate(evaluate)
        return None

    def evaluate(self, evaluate) -> dict:
        """Run `evaluate()` (returns metrics) in eval mode, without gradients, under a forked RNG."""
        self.raw_model.eval()
        with ckpt.forked_rng(self.device), torch.no_grad():
            metrics = evaluate()
            faults.point("eval")  # no-op unless OMNI_FAULT=eval@n (crash tests)
        self.raw_model.train()
        self.last_eval = {"step": self.step, "metrics": metrics}
        self.logger.metrics(self.step, metrics, kind="eval")
        self.info(f"eval step {self.step}: " + " ".join(f"{k} {fmt(v)}" for k, v in metrics.items()))
        if self.metric is not None:
            value = metrics[self.metric]
            if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
                self.best = value
                self.save_checkpoint(self.run_dir / f"{self.name}_best.pt")
                self.info(f"new best {self.metric} {fmt(value)}")
        return metrics

    def eval_batches(self, source, batch_size: int, *, shard: bool = True):
        """Every validation sample once, on the device: this rank's share, or (shard=False) all of it on every rank,
        for metrics that need every candidate at once such as retrieval R@k. Bad samples are named in the log."""
        rank, world = (self.rank, self.world_size) if shard else (0, 1)
        return loader.eval_batches(source, batch_size, rank=rank, world_size=world, device=self.device, log=self.info)

    def reduce_sums(self, values: dict) -> dict:
        return dist.all_reduce_sums(values, self.device)

    def maybe_checkpoint(self) -> None:
        if self.step % self.train.checkpoint_freq == 0:
            self.save_checkpoint()

    def save_checkpoint(self, path: Path | None = None) -> None:
        """Write a training checkpoint (rank 0): the newest `<name>_step_<N>.pt` unless `path` is given."""
        if not self.is_main:
            if path is None:
                self._last_saved_step = self.step
                self.nonfinite.checkpointed(self.run_dir / f"{self.name}_step_{self.step}.pt")  # written by rank 0
            return
        if self._clock is not None:  # bank the time so far, so that elapsed survives a resume
            now = time.perf_counter()
            self.elapsed += now - self._clock
            self._clock = now
        target = path or self.run_dir / f"{self.name}_step_{self.step}.pt"
        train_state.write_checkpoint(self, target)
        if path is None:
            self._last_saved_step = self.step
            self.nonfinite.checkpointed(target)
            ckpt.prune(self.run_dir, self.name, self.train.keep_last, up_to_step=self.step)

    def finish(self, evaluate, final_weights: dict[str, dict]) -> dict:
        """Final evaluation and checkpoint (unless already done at this step), final weights and summary.json.

        Rerunning a finished run lands here directly, so it only rewrites the final files. Not after a stop: the
        script checks `run.stopped` after the loop and ends there instead.
        """
        if self.stopped:
            raise RuntimeError("Run.finish() after a SIGTERM/Ctrl-C stop: end the script when run.stopped is set")
        if self.last_eval is None or self.last_eval["step"] != self.step:
            self.evaluate(evaluate)
        if self._last_saved_step != self.step:
            self.save_checkpoint()
        if self.is_main:
            summary = {"name": self.name, "step": self.step, "epoch": self.epoch, "metrics": self.last_eval["metrics"],
                       "best": self.best, "train_seconds": round(self.elapsed, 1), **self.counters}
            run_dir.write_final_files(self.run_dir, final_weights, summary)
            self.info(f"finished: step {self.step}, {self.elapsed:.1f}s of training; final weights: "
                      + ", ".join(str(self.run_dir / f) for f in final_weights))
        dist.barrier()
        dist.shutdown()
        return self.last_eval["metrics"]

    # ------------------------------------------------------------------ stop
    def _stop_now(self) -> None:
        """Checkpoint and mark the run stopped; batches() then ends, and the script ends normally (exit 0)."""
        if self._last_saved_step != self.step:
            self.save_checkpoint()
        self.info(f"stopped at step {self.step}; rerun the same command to resume")
        self.stopped = True

