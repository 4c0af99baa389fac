"""The training loop's DataLoader: its workers leave stop signals to the main process and never outlive a failed or
stopped loop."""

from __future__ import annotations

import contextlib
import signal

import torch
from torch.utils.data import DataLoader

from omni.data.resumable import evaluation_batches, seed_worker_generator


def training_loader(dataset, train, *, epoch: int, device: torch.device) -> DataLoader:
    """Batches of a ResumableDataset positioned for this epoch (it yields whole LoadedBatch objects itself), with
    cfg.train's num_workers."""
    num_workers = train.num_workers
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=device.type == "cuda",
                      generator=seed_worker_generator(train.seed, epoch),
                      prefetch_factor=4 if num_workers else None, collate_fn=_identity,
                      worker_init_fn=_leave_stop_signals_to_the_main_process if num_workers else None)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def eval_batches(source, batch_size: int, *, rank: int, world_size: int, device: torch.device, log):
    """Every validation sample of this rank's share once, on the device; bad samples are named in the log."""
    bad = []
    for loaded in evaluation_batches(source, batch_size=batch_size, rank=rank, world_size=world_size):
        bad.extend(loaded.bad)
        if loaded.batch is not None:
            yield to_device(loaded.batch, device)
    if bad:
        log(f"evaluation skipped {len(bad)} bad samples (not scored):\n  " + "\n  ".join(bad[:20]))


def _identity(x):
    return x


def _leave_stop_signals_to_the_main_process(_worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM/SIGINT: a signal sent to the whole process group (Ctrl-C, Slurm, `kill --
    -PGID`) would otherwise kill them and crash the main process before it can checkpoint. The main process stops
    them when it is done; if it dies, they exit on their own (the DataLoader's parent watchdog)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def shut_down_workers(loaded_batches) -> None:
    """Stop the workers of a DataLoader iterator now, also a worker stuck in a read.

    Why not leave it to Python's exit: a traceback keeps the iterator alive until the interpreter exits, and there
    torch's own shutdown is a no-op; multiprocessing then SIGTERMs its daemon children and joins them, but the
    workers ignore SIGTERM (_leave_stop_signals_to_the_main_process), so the process would hang forever. Here torch
    still can: its shutdown tells idle workers to exit (they skip the batches still queued) and forgets their pids
    (so its SIGCHLD handler does not report them as a new error), joining each for at most a few seconds; a worker
    still busy after that is SIGKILLed, the signal the main process alone sends and the workers can't ignore."""
    workers = list(getattr(loaded_batches, "_workers", ()))  # none without worker processes
    if workers:
        loaded_batches._shutdown_workers()
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join()


@contextlib.contextmanager
def workers_killed_on_error(loaded_batches):
    """Shut the workers down (shut_down_workers) when the iteration ends by an exception: an error in a worker or in
    the loop, a second Ctrl-C, a closed generator."""
    try:
        yield
    except BaseException:
        shut_down_workers(loaded_batches)
        raise
