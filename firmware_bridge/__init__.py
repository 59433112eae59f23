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

from edgernn.firmware_bridge.framing import Counters, Decoder, Samples
from edgernn.firmware_bridge.protocol import decode_frame, encode_data, encode_hello

__all__ = ["Counters", "Decoder", "Samples", "decode_frame", "encode_data", "encode_hello"]
