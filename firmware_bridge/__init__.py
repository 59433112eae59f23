"""The firmware bridge: sensor samples from microcontrollers over serial into the
live runtime.

- protocol.py   the binary wire format (COBS, CRC-16, frames) and its encoder
- framing.py    the incremental decoder: text and binary, auto-detect, accounting
- port.py       serial ports (pyserial URLs), the reader thread, reconnects
- live.py       `edgernn run MODEL --port PORT`: the live forecasting loop
- emulator.py   a sensor board on a pty, with injectable faults
- commands.py   `edgernn ports`, `edgernn emulate`
- firmware/     the C99 encoder and an Arduino sketch; PROTOCOL.md is the spec

Only numpy and pyserial are needed (plus onnxruntime for the live run).
"""

import importlib

_EXPORTS = {
    "Counters": "framing", "Decoder": "framing", "Samples": "framing",
    "decode_frame": "protocol", "encode_data": "protocol", "encode_hello": "protocol",
}  # fmt: skip
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """The package's names, imported on first use: `edgernn run --csv` builds its
    parser from options.py without the decoder (and numpy) a live run needs."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
