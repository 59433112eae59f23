"""The binary wire format: CRC, COBS, frame layouts, and the C encoder matching the
Python one byte for byte (compiled with the host's gcc)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgernn.firmware_bridge import protocol as P
from edgernn.firmware_bridge.framing import Decoder, DeviceInfo, Samples

FIRMWARE = Path(P.__file__).parent / "firmware"


# -- CRC / COBS --------------------------------------------------------------------------
def test_crc16_ccitt_false_check_value():
    assert P.crc16(b"123456789") == 0x29B1


@pytest.mark.parametrize(
    "raw, encoded",
    [
        (b"", b"\x01"),
        (b"\x00", b"\x01\x01"),
        (b"\x00\x00", b"\x01\x01\x01"),
        (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
        (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
        (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
        (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255))),
    ],
)
def test_cobs_reference_vectors(raw, encoded):
    assert P.cobs_encode(raw) == encoded
    assert P.cobs_decode(encoded) == raw


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1200))
def test_cobs_round_trip_has_no_zero(data):
    enc = P.cobs_encode(data)
    assert 0 not in enc
    assert P.cobs_decode(enc) == data
    assert len(enc) <= len(data) + len(data) // 254 + 1


def test_cobs_decode_rejects_a_block_past_the_end():
    with pytest.raises(P.FrameError) as e:
        P.cobs_decode(b"\x05\x01\x02")
    assert e.value.reason == "cobs"


# -- frames ------------------------------------------------------------------------------
def test_data_frame_round_trip():
    values = np.arange(24, dtype=np.float32).reshape(3, 8) - 4.5
    wire = P.encode_data(0xFFFFFFFE, 123456, values)
    assert wire.endswith(b"\x00") and 0 not in wire[:-1]
    frame = P.decode_frame(wire[:-1])
    assert isinstance(frame, P.DataFrame)
    assert (frame.seq, frame.time_us) == (0xFFFFFFFE, 123456)
    np.testing.assert_array_equal(frame.samples, values)


def test_hello_frame_round_trip():
    wire = P.encode_hello(0xDEADBEEF, 1000.0, ["temp", "hum", "µ"], dropped=7, seq=42, time_us=9)
    hello = P.decode_frame(wire[:-1])
    assert hello == P.HelloFrame(0xDEADBEEF, 1000.0, 7, 42, 9, ["temp", "hum", "µ"])


def test_data_frame_layout_is_what_protocol_md_says():
    raw = P.cobs_decode(P.encode_data(258, 1, [[1.5]])[:-1])
    assert raw[:12] == bytes([1, 1, 1, 1]) + struct.pack("<II", 258, 1)
    assert raw[12:16] == struct.pack("<f", 1.5)
    assert raw[16:] == struct.pack("<H", P.crc16(raw[:16]))


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), "crc"),
        (lambda raw: raw[:5], "short"),
        (lambda raw: _reseal(bytes([2]) + raw[1:-2]), "version"),
        (lambda raw: _reseal(raw[:-3]), "length"),
    ],
)
def test_decode_frame_names_why_it_rejects(mutate, reason):
    raw = P.cobs_decode(P.encode_data(1, 2, [[1.0, 2.0]])[:-1])
    with pytest.raises(P.FrameError) as e:
        P.decode_frame(P.cobs_encode(mutate(raw)))
    assert e.value.reason == reason


def _reseal(body: bytes) -> bytes:
    return body + struct.pack("<H", P.crc16(body))


def test_unknown_frame_type_is_reported_not_rejected():
    frame = P.decode_frame(P.cobs_encode(_reseal(bytes([1, 9, 1, 0]) + bytes(8))))
    assert frame == P.UnknownFrame(9)


def test_encoder_refuses_oversized_frames():
    with pytest.raises(ValueError):
        P.encode_data(0, 0, np.zeros((255, 8)))


# -- the C encoder -----------------------------------------------------------------------
HARNESS = r"""
#include <stdio.h>
#include <string.h>
#include "edgernn_frame.h"

/* Reads commands from stdin, prints each encoded frame as hex (or "ERR" for 0):
 *   D seq time channels samples bits...      (float32 bit patterns, hex)
 *   H session ratebits dropped seq time channels name...
 *   S size seq channels samples              (encode into an out buffer of `size`)
 */
static uint8_t out[8192];

static float from_bits(unsigned long b) { float f; uint32_t u = (uint32_t)b; memcpy(&f, &u, 4); return f; }

static void emit(size_t n) {
    size_t i;
    if (!n) { printf("ERR\n"); return; }
    for (i = 0; i < n; i++) printf("%02x", out[i]);
    printf("\n");
}

int main(void) {
    char cmd[2];
    static float values[2048];
    while (scanf("%1s", cmd) == 1) {
        unsigned long seq, t, ch, s, bits, session, dropped, size;
        unsigned long i;
        if (cmd[0] == 'D') {
            if (scanf("%lx %lx %lu %lu", &seq, &t, &ch, &s) != 4) return 2;
            for (i = 0; i < ch * s; i++) { if (scanf("%lx", &bits) != 1) return 2; values[i] = from_bits(bits); }
            emit(edgernn_encode_data(out, sizeof out, (uint32_t)seq, (uint32_t)t, (uint8_t)ch, (uint8_t)s, values));
        } else if (cmd[0] == 'H') {
            static char names[64][64];
            const char *ptrs[64];
            if (scanf("%lx %lx %lu %lx %lx %lu", &session, &bits, &dropped, &seq, &t, &ch) != 6) return 2;
            for (i = 0; i < ch; i++) { if (scanf("%63s", names[i]) != 1) return 2; ptrs[i] = names[i]; }
            emit(edgernn_encode_hello(out, sizeof out, (uint32_t)session, from_bits(bits), (uint32_t)dropped,
                                      (uint32_t)seq, (uint32_t)t, (uint8_t)ch, ptrs));
        } else if (cmd[0] == 'S') {
            if (scanf("%lu %lx %lu %lu", &size, &seq, &ch, &s) != 4) return 2;
            for (i = 0; i < ch * s; i++) values[i] = 1.25f;
            emit(edgernn_encode_data(out, (size_t)size, (uint32_t)seq, 0, (uint8_t)ch, (uint8_t)s, values));
        } else {
            return 2;
        }
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def c_encoder(tmp_path_factory) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler on this machine")
    d = tmp_path_factory.mktemp("cenc")
    (d / "harness.c").write_text(HARNESS)
    exe = d / "harness"
    flags = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wconversion", "-O1"]
    subprocess.run(
        [gcc, *flags, f"-I{FIRMWARE}", str(FIRMWARE / "edgernn_frame.c"), str(d / "harness.c"),
         "-o", str(exe)],
        check=True, capture_output=True,
    )  # fmt: skip
    return exe


def _bits(values: np.ndarray) -> list[str]:
    return [f"{b:x}" for b in np.asarray(values, dtype="<f4").view("<u4").ravel()]


def _data_cases() -> list[tuple[int, int, np.ndarray]]:
    rng = np.random.default_rng(0)
    cases = [
        (0, 0, np.zeros((1, 1))),  # zero bytes everywhere
        (0xFFFFFFFF, 0x12345678, np.ones((1, 8))),
        (7, 7000, rng.standard_normal((10, 8))),  # > 254 bytes: 0xFF blocks
        (1, 2, rng.standard_normal((255, 1))),
        (3, 4, rng.integers(-3, 3, (4, 16)).astype(float)),
    ]
    # Raw frames that end exactly on a full 254-byte block (canonical COBS drops the
    # trailing empty block): header and payload free of zeros, CRC bytes non-zero.
    for _ in range(2000):
        values = rng.uniform(1.1, 1.9, (1, 60)).astype(np.float32)
        raw = P.cobs_decode(P.encode_data(0x01010101, 0x01010101, values)[:-1])
        if 0 not in raw:
            cases.append((0x01010101, 0x01010101, values))
            break
    cases += [
        (int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32)), rng.standard_normal(shape))
        for shape in [(1, 3), (2, 5), (1, 64), (32, 4)]
    ]
    return cases


def test_c_encoder_is_byte_identical_to_python(c_encoder):
    cases = _data_cases()
    assert any(len(v.ravel()) == 60 for _, _, v in cases)  # the full-block case was found
    lines = []
    expected = []
    for seq, t, values in cases:
        values = np.asarray(values, dtype=np.float32)
        s, c = values.shape
        lines.append(f"D {seq:x} {t:x} {c} {s} " + " ".join(_bits(values)))
        expected.append(P.encode_data(seq, t, values))
    hellos = [
        (0xCAFEBABE, 1000.0, 3, 5, 77, ["temperature", "humidity", "pressure"]),
        (1, 0.5, 0, 0, 0, ["a"]),
        (0xFFFFFFFF, 44100.0, 2**32 - 1, 2**32 - 1, 1, ["x" * 40, "y"]),  # name cut at 32
    ]
    for session, rate, dropped, seq, t, names in hellos:
        lines.append(
            f"H {session:x} {_bits([rate])[0]} {dropped} {seq:x} {t:x} {len(names)} "
            + " ".join(names)
        )
        expected.append(P.encode_hello(session, rate, names, dropped, seq, t))
    out = subprocess.run(
        [str(c_encoder)], input="\n".join(lines), capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(out) == len(expected)
    for got, want in zip(out, expected):
        assert bytes.fromhex(got) == want
        assert P.decode_frame(want[:-1]) is not None


def test_c_encoder_refuses_small_buffers_and_oversized_frames(c_encoder):
    need = len(P.encode_data(5, 0, np.full((2, 3), 1.25)))
    commands = f"S {need} 5 3 2\nS {need - 1} 5 3 2\nS 8192 0 255 5\nS 8192 0 0 1\n"
    out = subprocess.run(
        [str(c_encoder)], input=commands, capture_output=True, text=True, check=True
    ).stdout.split()
    assert bytes.fromhex(out[0]) == P.encode_data(5, 0, np.full((2, 3), 1.25))
    assert out[1:] == ["ERR", "ERR", "ERR"]  # too small, > 4096 raw bytes, no channels


# -- the Arduino sketch, against a minimal Arduino API on the host ------------------------
ARDUINO_STUB = r"""
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#define A0 14
#define A1 15
#define A2 16
static inline uint32_t micros(void) { static uint32_t t; return t += 50; }
static inline uint32_t millis(void) { return micros() / 1000; }
static inline int analogRead(uint8_t pin) { return pin * 7; }
static inline void noInterrupts(void) {}
static inline void interrupts(void) {}
static inline void randomSeed(uint32_t) {}
static inline long random(long n) { return n / 3; }
struct SerialStub {
  int room = 64;
  void begin(unsigned long) {}
  int availableForWrite() { return room; }
  size_t write(uint8_t b) { fputc(b, stdout); return 1; }
  size_t write(const uint8_t *p, size_t n) { fwrite(p, 1, n, stdout); return n; }
};
static SerialStub Serial;
"""

SKETCH_MAIN = r"""
int main() {
  setup();
  for (long i = 0; i < 200000; i++) {
    Serial.room = (i / 5000) % 4 == 3 ? 0 : 64;  // the UART stalls now and then
    loop();
  }
  return 0;
}
"""


def test_arduino_sketch_streams_frames_the_host_decodes(tmp_path):
    gxx = shutil.which("g++")
    gcc = shutil.which("gcc")
    if gxx is None or gcc is None:
        pytest.skip("no C/C++ compiler on this machine")
    (tmp_path / "Arduino.h").write_text(ARDUINO_STUB)
    sketch = (FIRMWARE / "edgernn_sensor" / "edgernn_sensor.ino").read_text()
    (tmp_path / "sketch.cpp").write_text(sketch + SKETCH_MAIN)
    inc = [f"-I{tmp_path}", f"-I{FIRMWARE}"]
    subprocess.run(
        [gcc, "-std=c99", "-Wall", "-Wextra", "-Werror", *inc, "-c",
         str(FIRMWARE / "edgernn_frame.c"), "-o", str(tmp_path / "frame.o")],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [gxx, "-std=c++11", "-Wall", "-Wextra", "-Werror", *inc, str(tmp_path / "sketch.cpp"),
         str(tmp_path / "frame.o"), "-o", str(tmp_path / "sketch")],
        check=True, capture_output=True,
    )  # fmt: skip
    wire = subprocess.run([str(tmp_path / "sketch")], capture_output=True, check=True).stdout
    dec = Decoder("auto", ["temperature", "humidity", "pressure"])
    events, checked, next_seq = [], 0, None
    for frame in wire.split(b"\x00"):
        before = dec.counters.missing
        new = dec.feed(frame + b"\x00")
        events += new
        for e in new:
            if isinstance(e, Samples):
                next_seq = e.seq + len(e.values)
        hello = P.decode_frame(frame) if frame else None
        if isinstance(hello, P.HelloFrame) and next_seq is not None:
            # Every sample the device dropped before its hello is missing on the host
            # or is in the seq range the hello says comes next: nothing unexplained.
            assert before + (hello.seq - next_seq) == hello.dropped
            checked += 1
    c = dec.counters
    info = [e for e in events if isinstance(e, DeviceInfo)]
    assert info and info[0].hello.names == ["temperature", "humidity", "pressure"]
    assert info[0].hello.rate_hz == 100.0
    samples = np.concatenate([e.values for e in events if isinstance(e, Samples)])
    assert c.rejected == 0 and c.samples == len(samples) > 500
    # The UART stalls overflowed the 32-sample ring: the oldest samples went, were
    # counted by the device, and showed up as exactly that many missing seq numbers.
    assert c.device_dropped > 0 and checked > 3
    np.testing.assert_allclose(samples[0], np.array([14, 15, 16]) * 7 * 5.0 / 1023.0, rtol=1e-6)


def test_protocol_md_examples_are_real_frames():
    text = (FIRMWARE.parent / "PROTOCOL.md").read_text()
    hexes = [
        bytes.fromhex(line.split(":", 1)[1])
        for line in text.splitlines()
        if line.startswith(("raw:", "wire:"))
    ]
    assert hexes == [
        P.cobs_decode(P.encode_data(258, 1000, [[1.0, -2.5]])[:-1]),
        P.encode_data(258, 1000, [[1.0, -2.5]]),
        P.cobs_decode(P.encode_hello(0x12345678, 100.0, ["t", "rh"], 0, 258, 999)[:-1]),
        P.encode_hello(0x12345678, 100.0, ["t", "rh"], 0, 258, 999),
    ]
