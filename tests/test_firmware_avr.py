"""The firmware on AVR: edgernn_frame.c and the Arduino sketch's Timer1 path built with
avr-gcc for an atmega328p (Arduino Uno) and, where simavr's library is installed, run on
a simulated one with the UART's bytes checked against the Python encoder.

The Arduino core is not installed: tests/avr_shim/ stands in for it (Arduino.h and a
minimal core on the 328p's registers); the sketch itself is compiled unchanged.

Needs `apt-get install gcc-avr avr-libc` (and `simavr libsimavr-dev libelf-dev` for the
simulation); skips without them.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgernn.firmware_bridge import protocol as P
from edgernn.firmware_bridge.framing import Decoder, DeviceInfo, Samples

FIRMWARE = Path(P.__file__).parent / "firmware"
SKETCH = FIRMWARE / "edgernn_sensor" / "edgernn_sensor.ino"
SHIM = Path(__file__).parent / "avr_shim"
NAMES = ["temperature", "humidity", "pressure"]

F_CPU = 16_000_000
MCU = ["-mmcu=atmega328p", f"-DF_CPU={F_CPU}UL"]
WARN = ["-Wall", "-Wextra", "-Werror"]
# What the Arduino IDE passes for an Uno (less its -w and -fpermissive), plus -Werror.
CXX = ["-x", "c++", "-std=gnu++11", "-Os", "-fno-exceptions", "-fno-threadsafe-statics",
       "-ffunction-sections", "-fdata-sections", "-DARDUINO_ARCH_AVR"]  # fmt: skip
UNO_FLASH = 32256  # 32 KiB less the 512-byte bootloader
ENCODER_TEXT_MAX = 2048  # measured 1207 bytes with avr-gcc 5.4 -Os
SKETCH_RAM_MAX = 1024  # static RAM (.data + .bss), half the Uno's 2 KiB: the rest is stack


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt-get install gcc-avr avr-libc binutils-avr)")
    return path


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout}{proc.stderr}"
    return proc


def _sizes(elf_or_obj: Path) -> dict[str, int]:
    """Bytes per kind of section (text, rodata, data, bss), from `avr-size -A`; the
    per-function sections of -ffunction-sections are summed into their kind."""
    out = _run([_tool("avr-size"), "-A", elf_or_obj]).stdout
    sizes = {"text": 0, "rodata": 0, "data": 0, "bss": 0}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            kind = parts[0].split(".")[1]
            if kind in sizes:
                sizes[kind] += int(parts[1])
    return sizes


@pytest.fixture(scope="module")
def avr_build(tmp_path_factory):
    """Builds edgernn_frame.o and the sketch's ELF once: returns a function that builds
    a sketch (the real one by default) into an ELF, and the build folder."""
    gcc, gxx = _tool("avr-gcc"), _tool("avr-g++")
    d = tmp_path_factory.mktemp("avr")
    frame_o = d / "edgernn_frame.o"
    _run([gcc, *MCU, "-Os", "-std=c99", *WARN, "-pedantic", "-Wconversion",
          "-ffunction-sections", "-fdata-sections", f"-I{FIRMWARE}", "-c",
          FIRMWARE / "edgernn_frame.c", "-o", frame_o])  # fmt: skip
    shim_o = d / "arduino_shim.o"
    _run([gxx, *MCU, *CXX, *WARN, f"-I{SHIM}", "-c", SHIM / "arduino_shim.cpp", "-o", shim_o])

    def build(source: Path = SKETCH, name: str = "sketch", check: bool = True):
        obj, elf = d / f"{name}.o", d / f"{name}.elf"
        cmd = [gxx, *MCU, *CXX, *WARN, f"-I{SHIM}", f"-I{FIRMWARE}", "-c", source, "-o", obj]
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        if not check:
            return proc
        assert proc.returncode == 0, proc.stderr
        _run([gxx, *MCU, "-Os", "-Wl,--gc-sections", obj, shim_o, frame_o, "-o", elf])
        return elf

    return build, d


# -- building ----------------------------------------------------------------------------
def test_encoder_builds_for_atmega328p_and_is_small(avr_build):
    _, d = avr_build
    sizes = _sizes(d / "edgernn_frame.o")
    text = sizes["text"]
    # No RAM of its own (no static state), but for the "" of a missing channel name.
    assert sizes["data"] + sizes["bss"] == 0 and sizes["rodata"] <= 8
    assert 0 < text < ENCODER_TEXT_MAX, f"edgernn_frame.c .text is {text} bytes on AVR"


def test_sketch_avr_timer1_path_builds_for_an_uno(avr_build):
    build, _ = avr_build
    elf = build()
    symbols = _run([_tool("avr-nm"), "-C", elf]).stdout
    # TIMER1_COMPA_vect is vector 11 on the 328p: the sketch's ISR, not the default
    # handler (a weak alias), is linked in, next to the shim's Timer0 and UDRE ISRs.
    defined = {line.split()[-1] for line in symbols.splitlines() if " T " in line}
    assert {"__vector_11", "__vector_16", "__vector_19"} <= defined
    assert {"setup()", "loop()", "edgernn_encode_data", "edgernn_encode_hello"} <= defined
    sizes = _sizes(elf)
    flash = sizes["text"] + sizes["data"]
    ram = sizes["data"] + sizes["bss"]
    assert flash < UNO_FLASH // 4, f"sketch is {flash} bytes of flash"
    assert ram < SKETCH_RAM_MAX, f"sketch uses {ram} bytes of static RAM"


@pytest.mark.parametrize(
    "define, message",
    [
        ("#define RATE_HZ 10UL", "OCR1A would overflow"),
        ("#define SAMPLES_PER_FRAME 5", "a data frame must fit the TX buffer"),
    ],
)
def test_sketch_refuses_avr_configurations_that_cannot_work(avr_build, define, message):
    build, d = avr_build
    text = SKETCH.read_text()
    key = define.rsplit(" ", 1)[0] + " "
    line = next(x for x in text.splitlines() if x.startswith(key))
    bad = d / f"bad_{define.split()[1].lower()}.cpp"
    bad.write_text(text.replace(line, define))
    proc = build(bad, name=bad.stem, check=False)
    assert proc.returncode != 0 and message in proc.stderr


# -- running on a simulated atmega328p (simavr) -----------------------------------------
RUNNER = r"""
/* Runs an atmega328p ELF at 16 MHz in simavr until it sleeps with interrupts off or
 * CYCLES have run; writes every byte USART0 sends to OUT.
 *   runner ELF OUT CYCLES [ADC0_mV ADC1_mV ...] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "sim_avr.h"
#include "sim_elf.h"
#include "avr_adc.h"
#include "avr_uart.h"

static FILE *uart_out;

static void on_uart(struct avr_irq_t *irq, uint32_t value, void *param) {
    (void)irq; (void)param;
    fputc((int)(value & 0xFF), uart_out);
}

int main(int argc, char **argv) {
    elf_firmware_t fw;
    avr_t *avr;
    uint32_t flags = 0;
    unsigned long long cycles;
    int i, state;
    if (argc < 4 || !(uart_out = fopen(argv[2], "wb"))) return 2;
    memset(&fw, 0, sizeof fw);
    if (elf_read_firmware(argv[1], &fw) != 0) return 3;
    if (!(avr = avr_make_mcu_by_name("atmega328p"))) return 4;
    avr_init(avr);
    fw.frequency = 16000000;
    fw.vcc = fw.avcc = fw.aref = 5000;
    avr_load_firmware(avr, &fw);
    avr->frequency = 16000000;
    avr->vcc = avr->avcc = avr->aref = 5000;
    avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
    flags &= ~(uint32_t)AVR_UART_FLAG_STDIO;
    avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT),
                            on_uart, NULL);
    for (i = 4; i < argc && i < 12; i++)
        avr_raise_irq(avr_io_getirq(avr, AVR_IOCTL_ADC_GETIRQ, ADC_IRQ_ADC0 + i - 4),
                      (uint32_t)atoi(argv[i]));
    cycles = strtoull(argv[3], NULL, 10);
    do {
        state = avr_run(avr);
    } while (state != cpu_Done && state != cpu_Crashed && avr->cycle < cycles);
    fclose(uart_out);
    fprintf(stderr, "state %d cycle %llu\n", state, (unsigned long long)avr->cycle);
    return state == cpu_Crashed ? 5 : 0;
}
"""


@pytest.fixture(scope="module")
def simavr(avr_build):
    """A host program that runs an AVR ELF in libsimavr and captures USART0's output."""
    _, d = avr_build
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no host C compiler to build the simavr runner")
    flags = ["-I/usr/include/simavr", "-lsimavr", "-lelf"]
    if shutil.which("pkg-config"):
        pc = subprocess.run(["pkg-config", "--cflags", "--libs", "simavr"], capture_output=True)
        if pc.returncode == 0:
            flags = pc.stdout.decode().split() + ["-lelf"]
    (d / "runner.c").write_text(RUNNER)
    exe = d / "runner"
    proc = subprocess.run(
        [gcc, "-O1", str(d / "runner.c"), "-o", str(exe), *flags], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip("libsimavr not installed (apt-get install libsimavr-dev libelf-dev)")

    def run(elf: Path, seconds: float, adc_mv=()) -> bytes:
        out = elf.with_suffix(".uart")
        cycles = int(seconds * F_CPU)
        _run([exe, elf, out, cycles, *adc_mv], timeout=60)
        return out.read_bytes()

    return run


def test_sketch_streams_at_100_hz_on_a_simulated_uno(avr_build, simavr):
    """The sketch, unchanged, on a simulated Uno: Timer1 paces the ADC at 100 Hz and the
    host decodes every frame; each frame is byte-identical to the Python encoder's."""
    build, _ = avr_build
    seconds, mv = 0.5, (1000, 2000, 3000)
    wire = simavr(build(), seconds, mv)
    assert wire[:1] == b"\x00"  # the boot delimiter

    chunks = wire.split(b"\x00")
    assert chunks[-1] == b""  # ends on a whole frame
    frames = []
    for chunk in filter(None, chunks[:-1]):
        f = P.decode_frame(chunk)
        if isinstance(f, P.DataFrame):
            again = P.encode_data(f.seq, f.time_us, f.samples)
        else:
            again = P.encode_hello(f.session, f.rate_hz, f.names, f.dropped, f.seq, f.time_us)
        assert again == chunk + b"\x00"
        frames.append(f)
    hello = frames[0]
    assert isinstance(hello, P.HelloFrame)
    assert (hello.names, hello.rate_hz, hello.dropped, hello.seq) == (NAMES, 100.0, 0, 0)

    data = [f for f in frames if isinstance(f, P.DataFrame)]
    seqs = [f.seq for f in data]
    assert seqs == list(range(len(data)))
    # 100 Hz from Timer1 in CTC mode, as seen by micros() (4 us steps) in the ISR.
    dt = np.diff([f.time_us for f in data])
    assert np.all(np.abs(dt - 10_000) <= 8), dt
    # Every period of the simulated time after sampling started produced one sample.
    taken = math.floor((seconds * 1e6 - data[0].time_us) / 10_000) + 1
    assert taken - 1 <= len(data) <= taken  # the last one may still be in the ring

    counts = np.concatenate([f.samples for f in data]) * 1023.0 / 5.0
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)  # whole ADC counts
    assert np.all(np.abs(counts - np.array(mv) * 1024 / 5000) <= 2)

    dec = Decoder("auto", NAMES)
    events = dec.feed(wire)
    assert any(isinstance(e, DeviceInfo) for e in events)
    assert sum(len(e.values) for e in events if isinstance(e, Samples)) == len(data)
    assert dec.counters.rejected == 0 and dec.counters.missing == 0


def _c_words(values: np.ndarray) -> str:
    bits = np.asarray(values, dtype="<f4").view("<u4").ravel()
    return ", ".join(f"0x{b:08x}UL" for b in bits)


def test_avr_encoder_is_byte_identical_to_python(avr_build, simavr):
    """edgernn_frame.c compiled for the 328p (16-bit int and size_t) sends, over its
    UART, exactly the bytes the Python encoder makes: COBS edge cases included."""
    rng = np.random.default_rng(1)
    data_cases = [
        (258, 1000, np.array([[1.0, -2.5]])),  # PROTOCOL.md's example
        (0, 0, np.zeros((1, 1))),  # zero bytes everywhere
        (0xFFFFFFFF, 0x12345678, np.ones((1, 8))),
        (7, 7000, rng.standard_normal((10, 8))),  # > 254 bytes: 0xFF blocks
        (3, 4, rng.integers(-3, 3, (4, 16)).astype(float)),
    ]
    # A raw frame that ends exactly on a full 254-byte block (no trailing empty block).
    for _ in range(2000):
        values = rng.uniform(1.1, 1.9, (1, 60)).astype(np.float32)
        if 0 not in P.cobs_decode(P.encode_data(0x01010101, 0x01010101, values)[:-1]):
            data_cases.append((0x01010101, 0x01010101, values))
            break
    assert len(data_cases) == 6
    hello_cases = [
        (0x12345678, 100.0, ["t", "rh"], 0, 258, 999),  # PROTOCOL.md's example
        (0xCAFEBABE, 1000.0, NAMES, 3, 5, 77),
        (0xFFFFFFFF, 44100.0, ["x" * 40, "y"], 2**32 - 1, 2**32 - 1, 1),  # name cut at 32
    ]

    src = [
        "#include <avr/interrupt.h>",
        "#include <avr/io.h>",
        "#include <avr/pgmspace.h>",
        "#include <avr/sleep.h>",
        "#include <string.h>",
        '#include "edgernn_frame.h"',
        "static uint8_t out[400];",
        "static float values[128];",
        "static void send(size_t n) {",
        "  size_t i;",
        "  for (i = 0; i < n; i++) { while (!(UCSR0A & (1 << UDRE0))) {} UDR0 = out[i]; }",
        "  if (n == 0) { while (!(UCSR0A & (1 << UDRE0))) {} UDR0 = 'E'; }",
        "}",
        "static void load(const uint32_t *pgm, size_t n) {",
        "  size_t i;",
        "  for (i = 0; i < n; i++) { uint32_t w = pgm_read_dword(&pgm[i]); memcpy(&values[i], &w, 4); }",
        "}",
    ]  # fmt: skip
    body = []
    expected = b""
    for k, (seq, t, values) in enumerate(data_cases):
        values = np.asarray(values, dtype=np.float32)
        s, c = values.shape
        src.append(f"static const uint32_t v{k}[] PROGMEM = {{{_c_words(values)}}};")
        body += [
            f"  load(v{k}, {s * c});",
            f"  send(edgernn_encode_data(out, sizeof out, {seq}UL, {t}UL, {c}, {s}, values));",
        ]
        expected += P.encode_data(seq, t, values)
    for k, (session, rate, names, dropped, seq, t) in enumerate(hello_cases):
        quoted = ", ".join(f'"{n}"' for n in names)
        src.append(f"static const char *const n{k}[] = {{{quoted}}};")
        rate_c = f"{rate!r}f"
        body.append(
            f"  send(edgernn_encode_hello(out, sizeof out, {session}UL, {rate_c}, {dropped}UL,"
            f" {seq}UL, {t}UL, {len(names)}, n{k}));"
        )
        expected += P.encode_hello(session, rate, names, dropped, seq, t)
    # Refusals: a buffer one byte short, and a frame over the 4096-byte limit.
    need = len(P.encode_data(5, 0, np.full((2, 3), 1.25)))
    body += [
        "  values[0] = values[1] = values[2] = values[3] = values[4] = values[5] = 1.25f;",
        f"  send(edgernn_encode_data(out, {need}, 5UL, 0UL, 3, 2, values));",
        f"  send(edgernn_encode_data(out, {need - 1}, 5UL, 0UL, 3, 2, values));",
        "  send(edgernn_encode_data(out, sizeof out, 0UL, 0UL, 255, 5, values));",
    ]
    expected += P.encode_data(5, 0, np.full((2, 3), 1.25)) + b"EE"
    src += [
        "int main(void) {",
        "  UCSR0A = 1 << U2X0; UBRR0H = 0; UBRR0L = 1;  /* 1 Mbaud at 16 MHz */",
        "  UCSR0C = (1 << UCSZ01) | (1 << UCSZ00); UCSR0B = 1 << TXEN0;",
        *body,
        "  while (!(UCSR0A & (1 << UDRE0))) {}",
        "  cli(); sleep_enable(); sleep_cpu();  /* simavr stops here */",
        "  return 0;",
        "}",
    ]
    _, d = avr_build
    (d / "encoder_main.c").write_text("\n".join(src) + "\n")
    elf = d / "encoder.elf"
    _run([_tool("avr-gcc"), *MCU, "-Os", "-std=c99", *WARN, f"-I{FIRMWARE}",
          d / "encoder_main.c", FIRMWARE / "edgernn_frame.c", "-o", elf])  # fmt: skip
    wire = simavr(elf, 0.5)
    assert wire == expected
