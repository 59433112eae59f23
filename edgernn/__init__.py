"""edgernn: train a recurrent forecaster, export it as a stateful single-step ONNX
graph, and stream it sample by sample on small boards.

The top-level package imports nothing heavy: `edgernn.runtime` and
`edgernn.firmware_bridge` need only numpy, onnxruntime and pyserial; torch and onnx
are used by `edgernn.train` and `edgernn.export` alone (the `[train]` extra).
"""

import os as _os

# In a source checkout the pipeline folders (train/, export/, runtime/, firmware_bridge/)
# sit beside this package and pyproject.toml maps them into it. When Python imports this
# folder straight from the checkout (`python -m edgernn` in the repository root after a
# non-editable install: the working directory comes first on sys.path) that mapping is
# absent, so the checkout root joins the package path and `edgernn.runtime` is found.
# An installed package holds its subpackages itself and is left alone.
_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
_SUBPACKAGES = ("train", "export", "runtime", "firmware_bridge")
if not _os.path.isdir(_os.path.join(_here, "runtime")) and all(
    _os.path.isfile(_os.path.join(_root, sub, "__init__.py")) for sub in _SUBPACKAGES
):
    __path__.append(_root)  # noqa: F821 - the package's own __path__

from edgernn.errors import (  # noqa: E402
    DataError,
    EdgernnError,
    ExportError,
    InputError,
    MissingDependencyError,
    ModelFormatError,
)

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "EdgernnError",
    "ExportError",
    "InputError",
    "MissingDependencyError",
    "ModelFormatError",
    "__version__",
]
