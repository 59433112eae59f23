"""`edgernn run --csv`'s fast path: chunks of rows stepped with Stream.run and written in
blocks give byte for byte the output of stepping and writing row by row (the Monitor and
RecordWriter.write), wherever the chunks are cut; the vectorised float32 formatting is
the scalar formula's for every value."""

from __future__ import annotations

import io
from contextlib import redirect_stderr

import numpy as np
import pytest
from conftest import synthetic_signal

from edgernn.runtime.csvdata import read_csv
from edgernn.runtime.csvrun import _report_event, run_csv
from edgernn.runtime.detector import Detector
from edgernn.runtime.model import Model
from edgernn.runtime.monitor import Monitor
from edgernn.runtime.output import RecordWriter, float32_decimals


def _scalar(values: np.ndarray) -> np.ndarray:
    """The formula RecordWriter.write uses for one float (NaN for non-finite)."""
    return np.array(
        [float(str(np.float32(v))) if np.isfinite(v) else np.nan for v in values.tolist()]
    )


def test_float32_decimals_matches_the_scalar_formula():
    rng = np.random.default_rng(7)
    values = np.concatenate([
        rng.integers(0, 2**32, 40_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        rng.standard_normal(20_000).astype(np.float32),
        np.round(rng.uniform(-500, 500, 20_000), 3).astype(np.float32),
        (10.0 ** np.arange(-45, 39)).astype(np.float32),  # powers of ten, subnormal to huge
        np.ldexp(1.0, np.arange(-149, 128)).astype(np.float32),  # powers of two
        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 0.1, 1 / 3, 16777217.0], np.float32),
    ])  # fmt: skip
    got, want = float32_decimals(values), _scalar(values)
    same = (got == want) & (np.signbit(got) == np.signbit(want))
    assert ((np.isnan(got) & np.isnan(want)) | same).all(), values[~same][:5]
    pairs = values[: values.size // 2 * 2].reshape(-1, 2)
    assert float32_decimals(pairs).shape == pairs.shape


def _messy_csv(path, n: int = 400) -> str:
    """A time column, a spike to flag, bad cells, short rows and blank lines."""
    x = synthetic_signal(n, seed=4)
    x[300:310, 1] += 40.0
    lines = ["timestamp,ch0,ch1,ch2"]
    for i, row in enumerate(x):
        cells = [f"2024-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}"]
        cells += [f"{v:.6f}" for v in row]
        if i % 37 == 3:
            cells[2] = "n/a"
        if i % 53 == 5:
            cells = cells[:2]
        lines.append(",".join(cells))
        if i % 61 == 7:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _row_by_row(model: Model, in_path: str, out_path: str, detector) -> None:
    """The reference: every row through Monitor.process and RecordWriter.write."""
    table = read_csv(in_path, channels=model.channels, on_bad="skip")
    monitor = Monitor(model, detector=detector)
    trailing = ["score", "anomaly", "onset"] if detector is not None else []
    order = sorted([(n, i) for i, n in enumerate(table.lines)] + [(n, -1) for n in table.skipped_rows])
    with RecordWriter(out_path, model.channels, leading=["timestamp"], trailing=trailing) as out:
        for line, i in order:
            if i < 0:  # a skipped row keeps its time cell where it has one
                out.write({"skipped": True, "line": line, **table.skipped_leading.get(line, {})})
                continue
            result = monitor.process(table.values[i], time=table.time[i])
            record = {"timestamp": table.time[i]}
            record.update({c: float(v) for c, v in zip(model.channels, table.values[i])})
            record["forecast"] = dict(zip(model.channels, result.pop("forecast").tolist()))
            record.update(result)
            _report_event(record, table.time[i])
            out.write(record)


def _horizon_model(tmp_path, horizon: int) -> str:
    import torch

    from edgernn.export.onnx_export import export_onnx
    from edgernn.train.model import Forecaster, ModelConfig

    torch.manual_seed(2)
    names = ["ch0", "ch1", "ch2"]
    cfg = ModelConfig(n_channels=3, cell="gru", hidden=8, horizon=horizon, channels=names)
    path = str(tmp_path / f"h{horizon}.onnx")
    export_onnx(Forecaster(cfg).eval(), path)
    return path


@pytest.mark.parametrize(
    "ext, with_detector, horizon",
    [("csv", True, 1), ("csv", False, 1), ("jsonl", True, 1), ("jsonl", False, 1), ("csv", True, 3)],
)
def test_chunked_run_is_byte_identical_to_row_by_row(
    exported_models, tmp_path, ext, with_detector, horizon
):
    if horizon == 1:
        model = Model(exported_models[("lstm", 1)][1])
    else:
        model = Model(_horizon_model(tmp_path, horizon))
        assert model.horizon == horizon
    in_path = _messy_csv(tmp_path / "in.csv")

    def detector():
        if with_detector:
            return Detector(channels=model.channels, warmup=30, alarm_every=200)
        return None

    want_path = str(tmp_path / f"want.{ext}")
    with redirect_stderr(io.StringIO()) as want_err:
        _row_by_row(model, in_path, want_path, detector())
    want = open(want_path, "rb").read()
    for chunk_rows in (1, 7, 64, 100_000):
        got_path = str(tmp_path / f"got{chunk_rows}.{ext}")
        with redirect_stderr(io.StringIO()) as got_err:
            summary = run_csv(model, in_path, got_path, skip_bad=True, detector=detector(),
                              chunk_rows=chunk_rows)  # fmt: skip
        assert open(got_path, "rb").read() == want, chunk_rows
        assert got_err.getvalue() == want_err.getvalue()
        assert summary.rows == summary.forecasts + summary.skipped == len(want.splitlines()) - (
            ext == "csv"
        )
    if with_detector:
        assert "alert #1 opened" in want_err.getvalue()
        assert summary.anomalies > 0
    assert summary.skipped_lines[:2] == [5, 7] and summary.skipped > 20


@pytest.mark.parametrize("special", ["none", "quoted time", "not finite"])
def test_write_block_formats_cells_as_write_does(tmp_path, special):
    rng = np.random.default_rng(5)
    floats = rng.standard_normal((6, 4)).astype(np.float32) * 1000
    times = [f"2024-01-01 00:00:0{i}" for i in range(6)]
    if special == "quoted time":
        times[2] = 'noon, "local"'
    if special == "not finite":
        floats[3, 1], floats[4, 3] = np.nan, np.inf
    trailing = [(i % 2, None if i == 1 else 0) for i in range(6)]
    gaps = [0, 3, 3 + 1, 8]  # before the first row, two together, after the last
    paths = [str(tmp_path / "block.csv"), str(tmp_path / "rows.csv")]
    kwargs = dict(channels=["a", "b"], leading=["time"], trailing=["anomaly", "onset"])
    with RecordWriter(paths[0], **kwargs) as out:
        out.write_block(floats, leading=times, trailing=trailing, gaps=gaps)
        assert out.count == 10
    with RecordWriter(paths[1], **kwargs) as out:
        kept = iter(range(6))
        for at in range(10):
            if at in gaps:
                out.write({"skipped": True, "line": at})
                continue
            i = next(kept)
            out.write({
                "time": times[i], "a": floats[i, 0], "b": floats[i, 1],
                "forecast": {"a": floats[i, 2], "b": floats[i, 3]},
                "anomaly": trailing[i][0], "onset": trailing[i][1],
            })  # fmt: skip
    block, rows = (open(p, "rb").read() for p in paths)
    assert block == rows and block.count(b"\n") == 11
