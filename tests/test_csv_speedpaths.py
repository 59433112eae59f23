"""`edgernn run --csv`'s speed paths give byte for byte what the reference paths give:
the block parse (csvdata._parse_block) the per-line reader's tables, skip reasons, errors
and chunk boundaries, and the vectorised float formatting (output.py) the reprs that
RecordWriter.write's scalar formula makes, on files with every kind of cell and line."""

from __future__ import annotations

import io
import random
from contextlib import redirect_stderr

import numpy as np
import pytest

from edgernn.errors import DataError, EdgernnError
from edgernn.runtime import csvdata, csvrun, output
from edgernn.runtime.csvdata import iter_csv
from edgernn.runtime.csvrun import run_csv
from edgernn.runtime.detector import Detector
from edgernn.runtime.model import Model
from edgernn.runtime.output import float32_repr_lines

GOOD_CELLS = [
    "0", "1", "-7", "+3", "12345678", "0.5", "-0.25", ".5", "5.", "3.14159", "-0.000001",
    "1e-7", "-2.5E-7", "1e20", "3.4e38", "-3.4028234e38", "1.17549435e-38", "1e-45",
    "123456789012", " 1.5", "2.5 ", "\t4", "1_000", "0.1", "0.30000000000000004", "-0",
    "9.999999e15", "1.0000001", "16777217", "0.0001", "0.00009999",
]  # fmt: skip
BAD_CELLS = [
    "", " ", "nan", "NaN", "inf", "-inf", "Infinity", "1e39", "-1e39", "abc", "1.2.3",
    "1,5", "0x10", "1e", "--1", "n/a", "#5", "1 2", "١٢",
]  # fmt: skip
ODD_LINES = [
    "", "   ", ",,,", "# a comment", '"1.5",2,3', '1,"2', "1\r2,3", "1,2,3,4,5,6", "1",
    "x\x00y,1,2", "é,1,2",
]  # fmt: skip


def _messy(rng: random.Random, rows: int, bad: float, channels=None, good=GOOD_CELLS):
    """A CSV with a random layout (delimiter, decimal mark, time / index / label columns,
    line ends) and cells, `bad` the share of odd cells and lines."""
    decimal = rng.choice([".", ".", ","])
    delim = rng.choice([";", "\t"]) if decimal == "," else rng.choice([",", ",", ";", "\t"])
    names = [f"ch{k}" for k in range(channels or rng.choice([1, 2, 3, 5]))]
    lead = []
    if rng.random() < 0.4:
        lead.append("index")
    if rng.random() < 0.5:
        lead.append("time")
    label = rng.random() < 0.3
    header = [{"index": "", "time": "timestamp"}[c] for c in lead] + names
    header += ["label"] if label else []
    if "time" in lead and rng.random() < 0.3:  # found by its cells, not its name
        header[lead.index("time")] = "when"
    eol = rng.choice(["\n", "\n", "\r\n"])
    lines = [delim.join(header)]
    for i in range(rows):
        cells = []
        for c in lead:
            if c == "index":
                cells.append(str(i))
            else:
                cells.append(f"2024-01-01 {i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}")
            if i and rng.random() < 0.1:
                cells[-1] = f" {cells[-1]}\t"  # the reader keeps the cell stripped
        for _ in names + (["label"] if label else []):
            if rng.random() < bad:
                cells.append(rng.choice(BAD_CELLS))
            elif rng.random() < 0.3:
                cells.append(rng.choice(good))
            else:
                cells.append(f"{rng.gauss(0, 10 ** rng.randint(-3, 4)):.{rng.randint(0, 7)}f}")
        if decimal == ",":
            cells = [c.replace(".", ",") if k >= len(lead) else c for k, c in enumerate(cells)]
        line = delim.join(cells)
        if rng.random() < bad / 3:
            line = rng.choice(ODD_LINES).replace(",", delim)
        if i and "time" in lead and rng.random() < bad / 3:
            line = f'"{line}"' if rng.random() < 0.5 else line.replace(":", '":', 1)
        lines.append(line)
    text = eol.join(lines) + (eol if rng.random() < 0.7 else "")
    opts = {"decimal": decimal, "keep": ["label"] if label else []}
    return text.encode(), opts


def _tables(path, **kwargs) -> tuple[list, str, str]:
    """Every chunk iter_csv yields (as plain data), the error that ended it, stderr."""
    got, error = [], ""
    with redirect_stderr(io.StringIO()) as err:
        try:
            for t in iter_csv(path, **kwargs):
                got.append({
                    **{k: v for k, v in vars(t).items() if k not in ("values", "extra")},
                    "values": (t.values.dtype, t.values.shape, t.values.tobytes()),
                    "extra": {k: (v.dtype, v.tobytes()) for k, v in t.extra.items()},
                })  # fmt: skip
        except DataError as e:
            error = str(e)
    return got, error, err.getvalue()


def _both(monkeypatch, path, **kwargs):
    """(block parse, reference): what iter_csv gives with and without the block parse."""
    want = (monkeypatch.setattr(csvdata, "fast_blocks", [False]), _tables(path, **kwargs))[1]
    got = (monkeypatch.setattr(csvdata, "fast_blocks", [True]), _tables(path, **kwargs))[1]
    return got, want


@pytest.mark.parametrize("seed", range(40))
def test_block_parse_reads_as_the_line_reader(tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    data, opts = _messy(rng, rows=rng.choice([3, 60, 400]), bad=rng.choice([0, 0.01, 0.2]))
    path = tmp_path / "in.csv"
    path.write_bytes(data)
    block = rng.choice([40, 300, csvdata.BLOCK_BYTES])  # many block ends, or few
    monkeypatch.setattr(csvdata, "BLOCK_BYTES", block)
    for on_bad in ("skip", "error"):
        for chunk_rows in (1, 7, 4096):
            got, want = _both(monkeypatch, path, on_bad=on_bad, chunk_rows=chunk_rows, **opts)
            assert got == want, (seed, on_bad, chunk_rows)
    if not want[1]:
        assert sum(len(t["lines"]) for t in want[0]) > 0


def test_the_block_parse_takes_the_plain_lines(tmp_path, monkeypatch):
    """Clean lines are parsed a block at a time; each odd one goes through the reader."""
    rows = [f"{i},{i}.5,{-i}" for i in range(3000)]
    rows[100], rows[2000] = "7,oops,1", '7,"8",9'
    path = tmp_path / "in.csv"
    path.write_text("time,a,b\r\n" + "\r\n".join(rows))
    want = (monkeypatch.setattr(csvdata, "fast_blocks", [False]), _tables(path, on_bad="skip"))[1]
    calls = []
    line = csvdata._Reader.line

    def counted(self, *args):
        calls.append(args[0])
        return line(self, *args)

    monkeypatch.setattr(csvdata._Reader, "line", counted)
    got = (monkeypatch.setattr(csvdata, "fast_blocks", [True]), _tables(path, on_bad="skip"))[1]
    assert got == want and want[1] == "" and want[0][0]["skipped_rows"] == [102]
    # the first row sets the layout; the bad cell's row is read on its own with the few
    # around it where the halving stops (SLOW_PIECE), the quoted one (a good row) alone
    assert calls[0] == 2 and 102 in calls and 2002 in calls
    assert len(calls) <= 2 + csvdata.SLOW_PIECE


def test_a_long_line_between_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(csvdata, "MAX_LINE_BYTES", 4096)
    rows = [f"{i},{i}.5" for i in range(400)]
    rows[50] = "1," + "2" * 5000  # over MAX_LINE_BYTES: a bad row
    rows[90] = "1," + "3" * 2000  # long, but a row
    path = tmp_path / "in.csv"
    path.write_text("a,b\n" + "\n".join(rows) + "\n")
    got, want = _both(monkeypatch, path, on_bad="skip", chunk_rows=64)
    assert got == want
    assert want[0][0]["skip_reasons"] == {52: "is over 0 MB long"}


def _scalar_lines(floats: np.ndarray) -> bytes:
    """RecordWriter.write's formula for every value: repr(float(str(np.float32(v))))."""
    return "".join(
        ",".join(repr(float(str(np.float32(x)))) if np.isfinite(x) else "" for x in row) + "\n"
        for row in floats.tolist()
    ).encode()


@pytest.mark.parametrize("compiled", [True, False])  # kernel.c's formatter, numpy's
def test_float32_repr_lines_writes_every_value_as_the_scalar_formula(monkeypatch, compiled):
    monkeypatch.setattr(output, "c_format", [compiled])
    rng = np.random.default_rng(11)
    with np.errstate(all="ignore"):  # 1e39 and up: inf
        values = _values(rng)
    values = np.concatenate([values, np.zeros(-len(values) % 8, np.float32)]).reshape(-1, 8)
    assert float32_repr_lines(values) == _scalar_lines(values)
    for shape in [(1, 1), (3, 2), (0, 4), (5000, 3)]:  # one block and several
        part = values.ravel()[: shape[0] * shape[1]].reshape(shape)
        assert float32_repr_lines(part) == _scalar_lines(part), shape


def _values(rng) -> np.ndarray:
    return np.concatenate([
        rng.integers(0, 2**32, 120_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        rng.standard_normal(40_000).astype(np.float32) * 10.0 ** rng.integers(-8, 9, 40_000),
        *[np.round(rng.uniform(-500, 500, 6000), k).astype(np.float32) for k in range(7)],
        (10.0 ** np.arange(-45, 39)).astype(np.float32),  # powers of ten, subnormal to huge
        -(10.0 ** np.arange(-45, 39)).astype(np.float32),
        np.ldexp(1.0, np.arange(-149, 128)).astype(np.float32),  # powers of two
        np.nextafter(np.float32([1e16, 1e-4, 1e-3, 1e15, 1e9]), np.float32(0)),  # notation edges
        np.float32([1e16, 9.999999e15, 1e-4, 9.99999e-5, 0.001, 123456789, 16777217, 0.1]),
        np.float32([0.0, -0.0, np.inf, -np.inf, np.nan, 1 / 3, 3.4028235e38, 1e-45, -1e-45]),
    ])  # fmt: skip


def _run(model, path, out, fast: bool, detector) -> tuple[bytes, str, tuple]:
    csvdata.fast_blocks[0] = output.fast_format[0] = csvrun.json_blocks[0] = fast
    try:
        with redirect_stderr(io.StringIO()) as err:
            try:
                s = run_csv(model, str(path), str(out), skip_bad=True, detector=detector,
                            chunk_rows=97)  # fmt: skip
                summary = (
                    s.rows,
                    s.forecasts,
                    s.skipped,
                    s.anomalies,
                    s.skipped_lines,
                    s.skipped_at,
                )
            except EdgernnError as e:  # e.g. a forecast gone inf on a huge input
                summary = (type(e).__name__, str(e))
    finally:
        csvdata.fast_blocks[0] = output.fast_format[0] = csvrun.json_blocks[0] = True
    return (open(out, "rb").read() if out.exists() else b""), err.getvalue(), summary


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
@pytest.mark.parametrize("seed", range(8))
def test_run_writes_the_same_bytes_as_the_reference(
    exported_models, tmp_path, monkeypatch, ext, seed
):
    """`edgernn run --csv --skip-bad-rows` on messy files: output, stderr and summary as
    with the per-line reader and Python's repr (CSV and JSON lines, with the detector on
    in odd seeds)."""
    model = Model(exported_models[("lstm", 1)][1])
    rng = random.Random(100 + seed)
    tame = [c for c in GOOD_CELLS if abs(float(c)) < 1e6]  # the detector wants finite forecasts
    good = tame if seed % 2 else GOOD_CELLS  # (huge inputs: inf forecasts, empty cells)
    data, opts = _messy(
        rng, rows=rng.choice([150, 500]), bad=0.05 * (seed % 3 > 0), channels=3, good=good
    )
    monkeypatch.setattr(csvdata, "_default_decimal", [opts["decimal"]])
    monkeypatch.setattr(csvdata, "BLOCK_BYTES", rng.choice([200, csvdata.BLOCK_BYTES]))
    path = tmp_path / "in.csv"
    path.write_bytes(data)

    def detector():
        return Detector(channels=model.channels, warmup=30, alarm_every=50) if seed % 2 else None

    got = _run(model, path, tmp_path / f"fast.{ext}", True, detector())
    want = _run(model, path, tmp_path / f"ref.{ext}", False, detector())
    assert got == want
    assert len(want[2]) > 2 and want[2][1] > 100  # it ran to the end
