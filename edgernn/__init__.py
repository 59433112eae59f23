"""edgernn: train a recurrent forecaster, export it as a stateful single-step ONNX
graph, and stream it sample by sample on small boards.

The top-level package imports nothing heavy: `edgernn.runtime` and
`edgernn.firmware_bridge` need only numpy, onnxruntime and pyserial; torch and onnx
are used by `edgernn.train` and `edgernn.export` alone (the `[train]` extra).
"""

from edgernn.errors import (
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
