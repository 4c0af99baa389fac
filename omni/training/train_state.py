"""What a Run's training checkpoint holds, and how a run starts: resumed from a checkpoint that fits, initialised
from an earlier stage's weights (init_from), or fresh.

A checkpoint (keys in omni.training.checkpoint) holds the model (all of it, or only the trainable parameters), every
optimizer/scheduler/scaler keyed by name, the data position (epoch, samples seen in the epoch), the best and last
evaluation, all RNG states, the config, the world size, the training time and the bad-sample/non-finite counters:
everything a rerun needs to continue exactly. Before anything is loaded the checkpoint is checked against the run:
the config parts in MUST_MATCH (unless --force), then the weights' names and shapes. Auto-resume skips (and names)
checkpoints that are unreadable or do not fit; a file the user named must load and fit.

The functions take the Run (`run`) whose position and bookkeeping they read or set.
"""

from __future__ import annotations

from pathlib import Path

from omni.config import to_dict
from omni.errors import UserError
from omni.training import checkpoint as ckpt
from omni.training.checkpoint import short_list
from omni.training.schedule import restore_schedule

# Config parts whose change makes a checkpoint meaningless for this run (checked on resume unless --force).
MUST_MATCH = ("model", "data", "train.batch_size")


def model_state(run) -> dict:
    if run.trainable_only:
        return {n: p.detach() for n, p in run.raw_model.named_parameters() if p.requires_grad}
    return run.raw_model.state_dict()


def checkpoint_state(run) -> dict:
    """Everything a rerun needs to continue `run` exactly where it is (between two optimizer steps)."""
    return {
        ckpt.MODEL: model_state(run),
        ckpt.TRAINABLE_ONLY: run.trainable_only,
        ckpt.OPTIMIZERS: {n: ckpt.optimizer_state_by_name(o, run.param_names) for n, o in run.optimizers.items()},
        ckpt.SCHEDULERS: {n: s.state_dict() for n, s in run.schedulers.items()},
        ckpt.SCALERS: {n: s.state_dict() for n, s in run.scalers.items()},
        ckpt.STEP: run.step, ckpt.EPOCH: run.epoch, ckpt.SAMPLES_IN_EPOCH: run.samples_in_epoch,
        ckpt.BEST: run.best, ckpt.LAST_EVAL: run.last_eval, ckpt.RNG: ckpt.capture_rng(),
        ckpt.CONFIG: to_dict(run.cfg), ckpt.WORLD_SIZE: run.world_size, ckpt.ELAPSED: run.elapsed,
        ckpt.COUNTERS: dict(run.counters), ckpt.LOG_WINDOW: run._window.state_dict(),
    }


def write_checkpoint(run, target: Path) -> None:
    """Write checkpoint_state(run) to `target` atomically; NaN/Inf weights or a failed write are a UserError that
    says the previous checkpoint is intact (finite weights only, so that every checkpoint is a good state)."""
    state = checkpoint_state(run)
    previous = ckpt.step_checkpoints(run.run_dir, run.name)
    kept = f"the previous checkpoint {previous[-1][1].name} is intact" if previous else "no checkpoint is lost"
    nonfinite = ckpt.nonfinite_tensors(state[ckpt.MODEL])  # one host sync; never save NaN weights as good
    if nonfinite:
        raise UserError(f"not writing {target}: the weights hold NaN/Inf at step {run.step} "
                        f"({short_list(nonfinite)}); {kept}. Lower train.lr, or use fp32/bf16")
    try:
        ckpt.atomic_save(state, target)
    except OSError as e:
        raise UserError(f"{ckpt.write_error(target, e)}; {kept}") from e


def find_resume_state(run) -> tuple[dict, Path] | None:
    """The checkpoint to resume from and its path, or None (train.resume: "never", "auto" or a file)."""
    mode = run.train.resume
    if mode == "never":
        return None
    if mode != "auto":
        path = Path(mode)
        state = ckpt.load(path)
        if ckpt.STEP not in state or ckpt.MODEL not in state:
            raise UserError(f"train.resume={mode}: {path} is not a training checkpoint (no {ckpt.STEP!r}/"
                            f"{ckpt.MODEL!r}); to start from its weights use init_from={mode} instead")
        problem = resume_misfit(run, state)
        if problem:
            raise UserError(f"train.resume={mode}: checkpoint {path} does not fit this model: {problem}")
        return state, path
    found = ckpt.load_newest_valid(run.run_dir, run.name, log=run.info, fits=lambda s: resume_misfit(run, s))
    if found is None:
        unusable = [p.name for _, p in ckpt.step_checkpoints(run.run_dir, run.name)]
        if unusable and not run.force:  # never restart from step 0 silently over a run's progress
            raise UserError(f"every checkpoint in {run.run_dir} is unreadable or does not fit this model "
                            f"({short_list(unusable)}); nothing was deleted. Move them away, or rerun with --force to "
                            "start this run from step 0")
        if unusable:
            run.info(f"WARNING (--force): starting from step 0 beside unusable {short_list(unusable)}")
        return None
    state, path = found
    if getattr(run.cfg, "init_from", None):
        run.info(f"run dir has checkpoints: resuming from {path.name}; init_from={run.cfg.init_from} is not used")
    else:
        run.info(f"resuming from {path}")
    return state, path


def resume_misfit(run, state: dict) -> str | None:
    """Check a checkpoint against this run before anything is loaded: the config first (a changed model config
    is the usual reason weights don't fit, and says so better), then the weights' names and shapes."""
    check_config(run, state.get(ckpt.CONFIG, {}))
    return ckpt.misfit(run.raw_model, state[ckpt.MODEL], partial=state.get(ckpt.TRAINABLE_ONLY, False))


def restore(run, state: dict, path: Path) -> None:
    """Load a checkpoint that fits (find_resume_state checked it) into the run: weights, optimizers, schedules,
    scalers, position, bookkeeping and RNG."""
    run.nonfinite.checkpointed(path)
    if state[ckpt.TRAINABLE_ONLY]:
        if getattr(run.cfg, "init_from", None):
            init_from(run, run.cfg.init_from)  # frozen weights come from the earlier stage
        _load_trainable(run, state[ckpt.MODEL])
    else:
        run.raw_model.load_state_dict(state[ckpt.MODEL])
    for n, opt in run.optimizers.items():
        fresh = ckpt.load_optimizer_state_by_name(opt, state[ckpt.OPTIMIZERS][n], run.param_names)
        if fresh:
            run.info(f"optimizer {n}: fresh state for {len(fresh)} newly trainable tensors: {short_list(fresh)}")
        restore_schedule(run.schedulers[n], state[ckpt.SCHEDULERS][n])
        if n in run.scalers and n in state[ckpt.SCALERS]:
            run.scalers[n].load_state_dict(state[ckpt.SCALERS][n])
    run.step, run.epoch = state[ckpt.STEP], state[ckpt.EPOCH]
    run.samples_in_epoch = state[ckpt.SAMPLES_IN_EPOCH]
    run.best, run.last_eval = state[ckpt.BEST], state[ckpt.LAST_EVAL]
    run.elapsed, run.counters = state[ckpt.ELAPSED], {**run.counters, **state[ckpt.COUNTERS]}
    if ckpt.LOG_WINDOW in state:
        run._window.load_state_dict(state[ckpt.LOG_WINDOW])
    if state[ckpt.WORLD_SIZE] != run.world_size:
        run.info(f"WARNING: checkpoint was written with world size {state[ckpt.WORLD_SIZE]}, now "
                 f"{run.world_size}: resuming at sample {run.samples_in_epoch} of epoch {run.epoch}, but the "
                 f"batch composition (and so the result) differs from an uninterrupted run")
    ckpt.restore_rng(state[ckpt.RNG])
    run.logger.drop_metrics_after(run.step)
    run.info(f"resumed at step {run.step}, epoch {run.epoch}, sample {run.samples_in_epoch}")


def _load_trainable(run, saved: dict) -> None:
    """Load a trainable-only state over the current model and report how the trainable set changed."""
    current = {n for n, p in run.raw_model.named_parameters() if p.requires_grad}
    run.raw_model.load_state_dict(saved, strict=False)  # it fits: checked by resume_misfit
    newly_trainable = sorted(current - set(saved))
    newly_frozen = sorted(set(saved) - current)
    if newly_trainable:
        run.info(f"freeze change: now trainable (from stage weights): {short_list(newly_trainable)}")
    if newly_frozen:
        run.info(f"freeze change: now frozen (kept at their trained values): {short_list(newly_frozen)}")


def init_from(run, source: str) -> None:
    """Start from the weights of a file (which must fit) or of the newest fitting checkpoint in a folder. Tensors
    the file lacks stay fresh (a later stage adds modules); tensors the model lacks, or wrong shapes, don't fit."""
    path = Path(source)

    def misfit(state: dict) -> str | None:
        if ckpt.MODEL not in state:
            return f"no {ckpt.MODEL!r} weights in it"
        return ckpt.misfit(run.raw_model, state[ckpt.MODEL], partial=True)

    if path.is_dir():
        found = (ckpt.load_newest_valid(path, run.name, log=run.info, fits=misfit)
                 or _newest_any(path, run.info, misfit))
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
    result = run.raw_model.load_state_dict(weights, strict=False)
    run.info(f"initialised from {path} ({len(weights)} tensors"
             + (f"; not in it, kept fresh: {short_list(result.missing_keys)})" if result.missing_keys else ")"))


def check_config(run, saved: dict) -> None:
    """The MUST_MATCH parts of a checkpoint's config against the run's: a difference is a UserError (a warning
    under --force)."""
    now = to_dict(run.cfg)
    diffs = []
    for key in MUST_MATCH:
        a, b = _get(saved, key), _get(now, key)
        if a != b:
            diffs.extend(_diff(a, b, key))
    if diffs:
        msg = "the config disagrees with the checkpoint:\n  " + "\n  ".join(diffs)
        if not run.force:
            raise UserError(f"{msg}\nuse a new train.save_dir, train.resume=never, or --force to resume anyway")
        run.info(f"WARNING (--force): {msg}")


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
