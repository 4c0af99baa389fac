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
    run.finish(evaluate, final_weights={"thinker.pt": {...}})

Exactness: a checkpoint is taken only between optimizer steps and holds the data position (epoch, samples seen in
the epoch), every optimizer/scheduler/scaler and all RNG states. The data order is a pure function of
(seed, epoch, position) and evaluation runs under a forked RNG, so a killed-and-rerun run replays the same batches
with the same random numbers and (on CPU) ends with bitwise identical weights.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import random
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from omni.config import to_dict
from omni.data.resumable import ResumableDataset, evaluation_batches, seed_worker_generator
from omni.errors import UserError
from omni.training import checkpoint as ckpt
from omni.training import distributed as dist
from omni.training import faults
from omni.training.log import RunLogger
from omni.training.schedule import restore_schedule, warmup_cosine

AMP_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# Config parts whose change makes a checkpoint meaningless for this run (checked on resume unless --force).
MUST_MATCH = ("model", "data", "train.batch_size")


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
            self._lock = _lock_run_dir(self.run_dir)
        dist.barrier()
        self.logger = RunLogger(self.run_dir, enabled=self.is_main, tensorboard=self.train.tensorboard)
        if self.is_main:  # with the lock held, no write is in flight: temp files are leftovers of a crash
            stale = list(self.run_dir.glob(".*.tmp"))
            for path in stale:
                path.unlink(missing_ok=True)
            if stale:
                self.info(f"removed {len(stale)} temporary file(s) left by a write that was interrupted: "
                          + _short([p.name for p in stale]))
        self.accum = self._grad_accum_steps()
        self.amp_dtype = AMP_DTYPES[self.train.precision]
        if self.train.threads:
            torch.set_num_threads(self.train.threads)
        random.seed(self.train.seed)
        np.random.seed(self.train.seed)
        torch.manual_seed(self.train.seed)
        # Training position and bookkeeping; everything here goes into checkpoints.
        self.step = self.epoch = self.samples_in_epoch = 0
        self.best = None
        self.last_eval = None
        self.elapsed = 0.0
        # Checkpointed with the rest, so a replay after a crash counts each sample once.
        self.counters = {"bad_samples": 0, "nonfinite_steps": 0, "epoch_bad": 0, "epoch_seen": 0}
        self._micro = 0
        self._boundary = False
        self._stepped: set[str] = set()
        self._consecutive_nonfinite = 0
        self._window: dict[str, torch.Tensor] = {}
        self._window_steps = 0
        self._last_saved_step = -1
        # Where a step that made the weights non-finite goes back to (see _rewind): the newest step checkpoint
        # this run wrote or resumed from, else a host copy of the weights it started with.
        self._good_checkpoint: Path | None = None
        self._start_weights: dict | None = None
        self._stop_requested = False
        self._clock = None
        self.info(f"run {name}: dir {self.run_dir}, device {self.device}, world size {self.world_size}, "
                  f"precision {self.train.precision}")
        if self.is_main:
            (self.run_dir / "config.json").write_text(_json(to_dict(cfg)))

    # ------------------------------------------------------------------ setup
    def _grad_accum_steps(self) -> int:
        t = self.train
        if t.effective_batch is None:
            return t.grad_accum_steps
        per_step = t.batch_size * self.world_size
        if t.effective_batch % per_step:
            raise ValueError(f"train.effective_batch={t.effective_batch} is not a multiple of batch_size x world_size "
                             f"= {t.batch_size} x {self.world_size}")
        accum = t.effective_batch // per_step
        self.info(f"effective batch {t.effective_batch} = {t.batch_size} x {accum} accumulation "
                  f"x {self.world_size} processes")
        return accum

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
            raise ValueError(f"the training set ({len(train_set)} samples) is smaller than one global batch "
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
        found = self._find_resume_state()
        if found is not None:
            self._restore(*found)
        else:
            if getattr(self.cfg, "init_from", None):
                self._init_from(self.cfg.init_from)
            self._start_weights = {k: v.detach().to("cpu", copy=True) for k, v in self._model_state().items()}
        if self.train.grad_checkpointing:
            if not hasattr(model, "set_gradient_checkpointing"):
                raise ValueError(f"train.grad_checkpointing: {type(model).__name__} has no set_gradient_checkpointing")
            model.set_gradient_checkpointing(True)
        wrapped = torch.compile(model) if self.train.compile else model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(wrapped, device_ids=ids, find_unused_parameters=find_unused_parameters)
        self.model = wrapped
        self.model.train()
        return wrapped

    def _find_resume_state(self) -> tuple[dict, Path] | None:
        """The checkpoint to resume from and its path, or None. Auto-resume skips (and names) checkpoints that are
        unreadable or do not fit the model; a file the user named must load and fit, else it is an error."""
        mode = self.train.resume
        if mode == "never":
            return None
        if mode != "auto":
            path = Path(mode)
            state = ckpt.load(path)
            if ckpt.STEP not in state or ckpt.MODEL not in state:
                raise UserError(f"train.resume={mode}: {path} is not a training checkpoint (no {ckpt.STEP!r}/"
                                f"{ckpt.MODEL!r}); to start from its weights use init_from={mode} instead")
            problem = self._resume_misfit(state)
            if problem:
                raise UserError(f"train.resume={mode}: checkpoint {path} does not fit this model: {problem}")
            return state, path
        found = ckpt.load_newest_valid(self.run_dir, self.name, log=self.info, fits=self._resume_misfit)
        if found is None:
            unusable = [p.name for _, p in ckpt.step_checkpoints(self.run_dir, self.name)]
            if unusable and not self.force:  # never restart from step 0 silently over a run's progress
                raise UserError(f"every checkpoint in {self.run_dir} is unreadable or does not fit this model "
                                f"({_short(unusable)}); nothing was deleted. Move them away, or rerun with --force to "
                                "start this run from step 0")
            if unusable:
                self.info(f"WARNING (--force): starting from step 0 beside unusable {_short(unusable)}")
            return None
        state, path = found
        if getattr(self.cfg, "init_from", None):
            self.info(f"run dir has checkpoints: resuming from {path.name}; init_from={self.cfg.init_from} is not used")
        else:
            self.info(f"resuming from {path}")
        return state, path

    def _resume_misfit(self, state: dict) -> str | None:
        """Check a checkpoint against this run before anything is loaded: the config first (a changed model config
        is the usual reason weights don't fit, and says so better), then the weights' names and shapes."""
        self._check_config(state.get(ckpt.CONFIG, {}))
        return ckpt.misfit(self.raw_model, state[ckpt.MODEL], partial=state.get(ckpt.TRAINABLE_ONLY, False))

    def _restore(self, state: dict, path: Path) -> None:
        self._good_checkpoint = path
        if state[ckpt.TRAINABLE_ONLY]:
            if getattr(self.cfg, "init_from", None):
                self._init_from(self.cfg.init_from)  # frozen weights come from the earlier stage
            self._load_trainable(state[ckpt.MODEL])
        else:
            self.raw_model.load_state_dict(state[ckpt.MODEL])
        for n, opt in self.optimizers.items():
            fresh = ckpt.load_optimizer_state_by_name(opt, state[ckpt.OPTIMIZERS][n], self.param_names)
            if fresh:
                self.info(f"optimizer {n}: fresh state for {len(fresh)} newly trainable tensors: {_short(fresh)}")
            restore_schedule(self.schedulers[n], state[ckpt.SCHEDULERS][n])
            if n in self.scalers and n in state[ckpt.SCALERS]:
                self.scalers[n].load_state_dict(state[ckpt.SCALERS][n])
        self.step, self.epoch = state[ckpt.STEP], state[ckpt.EPOCH]
        self.samples_in_epoch = state[ckpt.SAMPLES_IN_EPOCH]
        self.best, self.last_eval = state[ckpt.BEST], state[ckpt.LAST_EVAL]
        self.elapsed, self.counters = state[ckpt.ELAPSED], {**self.counters, **state[ckpt.COUNTERS]}
        self._last_saved_step = self.step
        if state[ckpt.WORLD_SIZE] != self.world_size:
            self.info(f"WARNING: checkpoint was written with world size {state[ckpt.WORLD_SIZE]}, now "
                      f"{self.world_size}: resuming at sample {self.samples_in_epoch} of epoch {self.epoch}, but the "
                      f"batch composition (and so the result) differs from an uninterrupted run")
        ckpt.restore_rng(state[ckpt.RNG])
        self.logger.drop_metrics_after(self.step)
        self.info(f"resumed at step {self.step}, epoch {self.epoch}, sample {self.samples_in_epoch}")

    def _load_trainable(self, saved: dict) -> None:
        """Load a trainable-only state over the current model and report how the trainable set changed."""
        current = {n for n, p in self.raw_model.named_parameters() if p.requires_grad}
        self.raw_model.load_state_dict(saved, strict=False)  # it fits: checked by _resume_misfit
        newly_trainable = sorted(current - set(saved))
        newly_frozen = sorted(set(saved) - current)
        if newly_trainable:
            self.info(f"freeze change: now trainable (from stage weights): {_short(newly_trainable)}")
        if newly_frozen:
            self.info(f"freeze change: now frozen (kept at their trained values): {_short(newly_frozen)}")

    def _init_from(self, source: str) -> None:
        """Start from the weights of a file (which must fit) or of the newest fitting checkpoint in a folder. Tensors
        the file lacks stay fresh (a later stage adds modules); tensors the model lacks, or wrong shapes, don't fit."""
        path = Path(source)

        def misfit(state: dict) -> str | None:
            if ckpt.MODEL not in state:
                return f"no {ckpt.MODEL!r} weights in it"
            return ckpt.misfit(self.raw_model, state[ckpt.MODEL], partial=True)

        if path.is_dir():
            found = (ckpt.load_newest_valid(path, self.name, log=self.info, fits=misfit)
                     or _newest_any(path, self.info, misfit))
            if found is None:
                raise UserError(f"init_from={source}: no loadable checkpoint that fits this model in that directory "
                                "(see the warnings above)")
            state, path = found
        else:
            state = ckpt.load(path)
            problem = misfit(state)
            if problem:
                raise UserError(f"init_from={source}: checkpoint {path} does not fit this model: {problem}")
        weights = state[ckpt.MODEL]
        result = self.raw_model.load_state_dict(weights, strict=False)
        self.info(f"initialised from {path} ({len(weights)} tensors"
                  + (f"; not in it, kept fresh: {_short(result.missing_keys)})" if result.missing_keys else ")"))

    def _check_config(self, saved: dict) -> None:
        now = to_dict(self.cfg)
        diffs = []
        for key in MUST_MATCH:
            a, b = _get(saved, key), _get(now, key)
            if a != b:
                diffs.extend(_diff(a, b, key))
        if diffs:
            msg = "the config disagrees with the checkpoint:\n  " + "\n  ".join(diffs)
            if not self.force:
                raise UserError(f"{msg}\nuse a new train.save_dir, train.resume=never, or --force to resume anyway")
            self.info(f"WARNING (--force): {msg}")

    # ------------------------------------------------------------------ the loop
    def batches(self, dataset: ResumableDataset):
        """Micro-batches on the device, from the current position until max_steps."""
        previous_handlers = self._install_signal_handlers()
        self.logger.start_bar(self.max_steps, self.step, self.name)
        self._clock = time.perf_counter()
        try:
            yield from self._epochs(dataset)
            self._check_bad_fraction()  # a run that ends mid-epoch still reports (and checks) what it skipped
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
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
            loaded_batches = iter(self._loader(dataset))
            with _workers_killed_on_error(loaded_batches):
                for loaded in loaded_batches:
                    self._count_samples(loaded)
                    self.samples_in_epoch = (loaded.index + 1) * g
                    if loaded.batch is None:
                        continue
                    self._micro += 1
                    self._boundary = self._micro == self.accum or loaded.index == last
                    yield _to_device(loaded.batch, self.device)
                    if self._stop_requested and self._micro == 0:
                        self._stop_now()
                    if self.step >= self.max_steps:
                        if loaded.index == last:
                            self._end_epoch()
                        break
                else:
                    self._end_epoch()
                    continue
            break

    def _loader(self, dataset):
        workers = self.train.num_workers
        return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=self.device.type == "cuda",
                          generator=seed_worker_generator(self.train.seed, self.epoch),
                          prefetch_factor=4 if workers else None, collate_fn=_identity,
                          worker_init_fn=_leave_stop_signals_to_the_main_process if workers else None)

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
            self._accumulate({key: 0.0})
            return
        if scaler:
            scaler.unscale_(opt)
        clip = self.train.grad_clip if self.train.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        # Host sync 1: the NaN/Inf guard has to know before stepping, so that a bad step is simply not applied.
        if not torch.isfinite(norm):
            self._nonfinite_step(f"non-finite gradients in {name}, update skipped")
        else:
            (scaler.step(opt) if scaler else opt.step())
            # Host sync 2: finite gradients can still give non-finite weights (a huge lr or weight decay, an
            # overflow in the optimizer state): check the tensors just updated (a sum each, see all_finite).
            # Undoing such a step reloads the last good state (_rewind) instead of keeping a copy of the weights
            # and optimizer state at every step, which would double the optimizer's memory and time for a rare case.
            if ckpt.all_finite(params):
                self._consecutive_nonfinite = 0
            else:
                self._nonfinite_step(f"the update of {name} made weights non-finite; {self._rewind()}")
        if scaler:
            scaler.update()
        opt.zero_grad(set_to_none=True)
        self._advance_schedule(name)
        self._accumulate({key: norm})

    def _nonfinite_step(self, what: str) -> None:
        """Count a step whose update was not applied (or undone); too many in a row is a config problem: stop."""
        self.counters["nonfinite_steps"] += 1
        self._consecutive_nonfinite += 1
        self.info(f"step {self.step}: {what} ({self._consecutive_nonfinite} in a row)")
        if self._consecutive_nonfinite >= self.train.max_nonfinite_steps:
            kept = (f"the last good checkpoint {self._good_checkpoint.name} is intact" if self._good_checkpoint
                    else "no checkpoint was written")
            raise UserError(f"{self._consecutive_nonfinite} consecutive non-finite steps (train.max_nonfinite_steps="
                            f"{self.train.max_nonfinite_steps}): stopping at step {self.step}; {kept}. Lower "
                            f"train.lr or train.weight_decay, or use fp32/bf16")

    def _rewind(self) -> str:
        """Put the weights and all optimizer states back to the last good state: the newest checkpoint this run
        wrote or resumed from (every saved one is finite), else the weights it started with and fresh optimizer
        state. The position in the data, the schedule and the RNG go on, so the steps since are lost, not replayed.
        Returns what it did, for the log."""
        if self._good_checkpoint is not None:
            state = ckpt.load(self._good_checkpoint)
            weights, optimizer_states, source = state[ckpt.MODEL], state[ckpt.OPTIMIZERS], self._good_checkpoint.name
        else:
            weights, optimizer_states, source = self._start_weights, {}, "the start of the run"
        self.raw_model.load_state_dict(weights, strict=False)  # fits: this run wrote it, or _resume_misfit checked it
        for n, opt in self.optimizers.items():
            saved = optimizer_states.get(n, {"state": {}})
            groups = ckpt.optimizer_state_by_name(opt, self.param_names)["param_groups"]  # keep the current lr
            ckpt.load_optimizer_state_by_name(opt, {"state": saved["state"], "param_groups": groups},
                                              self.param_names)
        return f"weights and optimizer state restored from {source}"

    def _advance_schedule(self, name: str) -> None:
        with warnings.catch_warnings():  # a skipped update still advances the schedule, which torch warns about
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.schedulers[name].step()

    def _accumulate(self, values: dict) -> None:
        for k, v in values.items():
            v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))
            self._window[k] = self._window.get(k, 0) + v

    # ------------------------------------------------------------------ logging, evaluation, checkpoints
    def log(self, **metrics) -> None:
        """Accumulate this step's metrics on the device; every log_freq steps average, sync once and write."""
        self._accumulate(metrics)
        self._window_steps += 1
        if self.step % self.train.log_freq and self.step != self.max_steps:
            return
        values = {k: (v / self._window_steps).item() for k, v in self._window.items()}
        # grad norms are accumulated once per optimizer per step, like the metrics
        values["lr"] = self.optimizers[next(iter(self.optimizers))].param_groups[0]["lr"]
        values["epoch"] = self.epoch
        self._window, self._window_steps = {}, 0
        self.logger.metrics(self.step, values)
        self.logger.info(f"step {self.step}/{self.max_steps} " + " ".join(f"{k} {_fmt(v)}" for k, v in values.items()))

    def info(self, message: str) -> None:
        self.logger.info(message)

    def maybe_evaluate(self, evaluate) -> dict | None:
        if self.step % self.train.val_freq == 0:
            return self.evaluate(evaluate)
        return None

    def evaluate(self, evaluate) -> dict:
        """Run `evaluate()` (returns metrics) in eval mode, without gradients, under a forked RNG."""
        self.raw_model.eval()
        py_state, np_state = random.getstate(), np.random.get_state()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            metrics = evaluate()
            faults.point("eval")  # no-op unless OMNI_FAULT=eval@n (crash tests)
        random.setstate(py_state)
        np.random.set_state(np_state)
        self.raw_model.train()
        self.last_eval = {"step": self.step, "metrics": metrics}
        self.logger.metrics(self.step, metrics, kind="eval")
        self.info(f"eval step {self.step}: " + " ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()))
        if self.metric is not None:
            value = metrics[self.metric]
            if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
                self.best = value
                self.save_checkpoint(self.run_dir / f"{self.name}_best.pt")
                self.info(f"new best {self.metric} {_fmt(value)}")
        return metrics

    def eval_batches(self, source, batch_size: int, *, shard: bool = True):
        """Every validation sample once, on the device: this rank's share, or (shard=False) all of it on every rank,
        for metrics that need every candidate at once such as retrieval R@k. Bad samples are named in the log."""
        bad = []
        rank, world = (self.rank, self.world_size) if shard else (0, 1)
        for loaded in evaluation_batches(source, batch_size=batch_size, rank=rank, world_size=world):
            bad.extend(loaded.bad)
            if loaded.batch is not None:
                yield _to_device(loaded.batch, self.device)
        if bad:
            self.info(f"evaluation skipped {len(bad)} bad samples (not scored):\n  " + "\n  ".join(bad[:20]))

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
                self._good_checkpoint = self.run_dir / f"{self.name}_step_{self.step}.pt"  # written by rank 0
                self._start_weights = None
            return
        if self._clock is not None:  # bank the time so far, so that elapsed survives a resume
            now = time.perf_counter()
            self.elapsed += now - self._clock
            self._clock = now
        state = {
            ckpt.MODEL: self._model_state(),
            ckpt.TRAINABLE_ONLY: self.trainable_only,
            ckpt.OPTIMIZERS: {n: ckpt.optimizer_state_by_name(o, self.param_names) for n, o in self.optimizers.items()},
            ckpt.SCHEDULERS: {n: s.state_dict() for n, s in self.schedulers.items()},
            ckpt.SCALERS: {n: s.state_dict() for n, s in self.scalers.items()},
            ckpt.STEP: self.step, ckpt.EPOCH: self.epoch, ckpt.SAMPLES_IN_EPOCH: self.samples_in_epoch,
            ckpt.BEST: self.best, ckpt.LAST_EVAL: self.last_eval, ckpt.RNG: ckpt.capture_rng(),
            ckpt.CONFIG: to_dict(self.cfg), ckpt.WORLD_SIZE: self.world_size, ckpt.ELAPSED: self.elapsed,
            ckpt.COUNTERS: dict(self.counters),
        }
        target = path or self.run_dir / f"{self.name}_step_{self.step}.pt"
        previous = ckpt.step_checkpoints(self.run_dir, self.name)
        kept = f"the previous checkpoint {previous[-1][1].name} is intact" if previous else "no checkpoint is lost"
        nonfinite = ckpt.nonfinite_tensors(state[ckpt.MODEL])  # one host sync; never save NaN weights as good
        if nonfinite:
            raise UserError(f"not writing {target}: the weights hold NaN/Inf at step {self.step} "
                            f"({_short(nonfinite)}); {kept}. Lower train.lr, or use fp32/bf16")
        try:
            ckpt.atomic_save(state, target)
        except OSError as e:
            raise UserError(f"{ckpt.write_error(target, e)}; {kept}") from e
        if path is None:
            self._last_saved_step = self.step
            self._good_checkpoint, self._start_weights = target, None
            ckpt.prune(self.run_dir, self.name, self.train.keep_last, up_to_step=self.step)

    def _model_state(self) -> dict:
        if self.trainable_only:
            return {n: p.detach() for n, p in self.raw_model.named_parameters() if p.requires_grad}
        return self.raw_model.state_dict()

    def finish(self, evaluate, final_weights: dict[str, dict]) -> dict:
        """Final evaluation and checkpoint (unless already done at this step), final weights and summary.json.

        Rerunning a finished run lands here directly, so it only rewrites the final files.
        """
        if self.last_eval is None or self.last_eval["step"] != self.step:
            self.evaluate(evaluate)
        if self._last_saved_step != self.step:
            self.save_checkpoint()
        if self.is_main:
            for filename, payload in final_weights.items():
                try:
                    ckpt.atomic_save(payload, self.run_dir / filename)
                except OSError as e:
                    raise UserError(f"{ckpt.write_error(self.run_dir / filename, e)}; the training checkpoints "
                                    f"are intact: rerun to write the final weights again") from e
            summary = {"name": self.name, "step": self.step, "epoch": self.epoch, "metrics": self.last_eval["metrics"],
                       "best": self.best, "train_seconds": round(self.elapsed, 1), **self.counters}
            (self.run_dir / "summary.json").write_text(_json(summary))
            self.info(f"finished: step {self.step}, {self.elapsed:.1f}s of training; final weights: "
                      + ", ".join(str(self.run_dir / f) for f in final_weights))
        dist.barrier()
        dist.shutdown()
        return self.last_eval["metrics"]

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> dict:
        """SIGTERM / Ctrl-C finish the current step, checkpoint and exit 0. Returns the handlers replaced."""
        def request_stop(signum, frame):
            if self._stop_requested:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            self._stop_requested = True
            self.info(f"{signal.Signals(signum).name} received: finishing this step, then checkpointing")
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, request_stop)
        return previous

    def _stop_now(self) -> None:
        if self._last_saved_step != self.step:
            self.save_checkpoint()
        self.info(f"stopped at step {self.step}; rerun the same command to resume")
        self.logger.close()
        raise SystemExit(0)


_HELD_LOCKS: dict[Path, object] = {}  # run dir -> lock file handle held by this process


def _lock_run_dir(run_dir: Path):
    """Hold an exclusive lock on the run dir for the life of the process, so that two runs can never interleave
    checkpoints in one folder. The OS drops the lock when the process dies, kill -9 included. Within one process
    the lock is reused (a later Run in the same process, as in tests, follows the earlier one; it can't overlap)."""
    key = run_dir.resolve()
    if key in _HELD_LOCKS:
        return _HELD_LOCKS[key]
    handle = (run_dir / ".lock").open("a+")
    try:
        # lockf (POSIX) rather than flock: forked DataLoader workers don't inherit it, so a killed run's
        # lingering workers can't keep the rerun locked out.
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        raise UserError(f"{run_dir} is in use by another running process (pid {owner}); wait for it or stop it") \
            from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _HELD_LOCKS[key] = handle
    return handle


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _leave_stop_signals_to_the_main_process(_worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM/SIGINT: a signal sent to the whole process group (Ctrl-C, Slurm, `kill --
    -PGID`) would otherwise kill them and crash the main process before it can checkpoint. The main process stops
    them when it is done; if it dies, they exit on their own (the DataLoader's parent watchdog)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _workers_killed_on_error(loaded_batches):
    """Stop the DataLoader's workers now when the iteration ends by an exception (an error in a worker or in the loop,
    a stop, a closed generator): left to Python's exit, they would hang the process forever.

    Why: the traceback keeps the iterator alive until the interpreter exits, and there torch's own shutdown is a
    no-op; multiprocessing then SIGTERMs its daemon children and joins them, but the workers ignore SIGTERM
    (_leave_stop_signals_to_the_main_process). So shut them down here, while torch still can: its shutdown tells
    idle workers to exit (they skip the batches still queued) and forgets their pids (so its SIGCHLD handler does
    not report them as a new error), joining each for at most a few seconds; a worker still busy after that (a
    stuck read) is SIGKILLed, the signal the main process alone sends and the workers can't ignore."""
    try:
        yield
    except BaseException:
        workers = list(getattr(loaded_batches, "_workers", ()))  # none without worker processes
        if workers:
            loaded_batches._shutdown_workers()
            for worker in workers:
                if worker.is_alive():
                    worker.kill()
                    worker.join()
        raise


def _identity(x):
    return x


def _newest_any(folder: Path, log, misfit):
    """The newest readable .pt in a folder whose model weights fit (e.g. a stage's final weights file)."""
    for path in sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            state = ckpt.load(path)
        except ckpt.UnreadableCheckpoint as e:
            log(f"WARNING: {e}")
            continue
        problem = misfit(state)
        if problem is None:
            return state, path
        if ckpt.MODEL in state:
            log(f"WARNING: checkpoint {path} does not fit this model: {problem}")
    return None


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _diff(a, b, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [line for k in sorted(set(a) | set(b)) for line in _diff(a.get(k), b.get(k), f"{prefix}.{k}")]
    return [] if a == b else [f"{prefix}: checkpoint {a!r}, now {b!r}"]


def _short(names: list[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _json(obj) -> str:
    import json
    return json.dumps(obj, indent=2) + "\n"
