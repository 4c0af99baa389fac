"""The one error policy: a user's mistake is one clear message and a non-zero exit; a traceback means a bug in omni.

The library raises `UserError` (or a subclass, e.g. `omni.config.ConfigError`) for anything the user can fix: a bad
config key or value, a missing or unreadable file, bad data, a checkpoint that does not fit, a full disk. The
message names the file, line or key. Every other exception is a bug and keeps its traceback.

Scripts do not catch anything themselves: `import omni` installs `report_user_errors` as `sys.excepthook`, so an
uncaught `UserError` anywhere in a stage script (they are plain top-level code) prints

    error: <message>

on stderr and exits with status 1, with no traceback (`load_config` reports config errors itself, with argparse's
status 2). Code that runs in-process (tests, notebooks) just sees the exception.
"""

from __future__ import annotations

import sys


class UserError(Exception):
    """Something the user gave omni is wrong (config, path, data, checkpoint choice, disk): the message says what and
    where; shown without a traceback."""


class InvalidInput(UserError, ValueError):
    """A user's file or value that is there but wrong (also a ValueError, for callers that catch those)."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the user named that does not exist (also a FileNotFoundError)."""


def report_user_errors(exc_type, exc, tb) -> None:
    """sys.excepthook: a UserError becomes `error: message`; anything else is shown as usual. Either way Python then
    exits with status 1, after its normal shutdown (atexit handlers, DataLoader workers)."""
    if issubclass(exc_type, UserError):
        sys.stderr.write(f"error: {_without_worker_traceback(exc)}\n")
        sys.stderr.flush()
        return
    sys.__excepthook__(exc_type, exc, tb)


def _without_worker_traceback(exc: BaseException) -> str:
    """The user's message. A DataLoader worker's error comes back re-raised with the worker's whole traceback in its
    message ("Caught DataError in DataLoader worker process 0. Original Traceback ... DataError: <message>"): keep
    only the message."""
    text = str(exc)
    head = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    if "Original Traceback (most recent call last)" in text and head in text:
        return text.rsplit(head, 1)[1].rstrip()
    return text


def install() -> None:
    """Make `report_user_errors` the process's excepthook (done by `import omni`; idempotent)."""
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = report_user_errors
