"""omni: a tiny omni-modal model (text, image, speech in; text, speech out) trained stage by stage."""


def load_exported(path, **kwargs):
    """Load an export folder written by export.py -> `omni.export_reader.ExportedModel` (imported lazily, so
    `import omni` stays cheap)."""
    from omni.export_reader import load_exported as _load_exported

    return _load_exported(path, **kwargs)


def _install_error_policy():
    from omni import errors

    errors.install()


_install_error_policy()  # user mistakes print one line, not a traceback (see omni/errors.py)
