"""The exception tree. Every error a user can cause derives from EdgernnError and
carries a one-line message; the CLI prints that line and exits non-zero."""


class EdgernnError(Exception):
    """Base class of every error edgernn raises on purpose."""


class DataError(EdgernnError, ValueError):
    """A data file is malformed: bad header, missing or non-numeric cell, too few rows."""


class InputError(EdgernnError, ValueError):
    """An array handed to the runtime has the wrong shape or dtype, or holds NaN/inf."""


class ModelFormatError(EdgernnError):
    """A file is not an edgernn model, or its graph disagrees with its metadata."""


class MissingDependencyError(EdgernnError, ImportError):
    """An optional dependency (an extra) is not installed."""


class ExportError(EdgernnError):
    """Export failed its own checks (ONNX checker or numerical parity)."""


def require(module: str, extra: str = "train"):
    """Import an optional module or raise a one-line error naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"{module} is not installed; install the [{extra}] extra: pip install 'edgernn[{extra}]'"
        ) from e
