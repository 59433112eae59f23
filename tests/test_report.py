"""report.png explains itself: units on the axes, named fault bands, the forecast drawn
over the signal, detections in their own strip (not ticks inside the data panels)."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from edgernn.pump import CHANNELS, UNITS, pump_log  # noqa: E402
from edgernn.report import plot_report, report_figure  # noqa: E402


def _figure():
    log = pump_log(1200, seed=3)
    score = np.abs(np.random.default_rng(0).standard_normal(1200)) + 0.1
    score[:50] = np.nan  # warm-up
    detected = (log.label > 0).astype(int)
    threshold = np.full(1200, 2.5)
    return report_figure(
        CHANNELS, log.values, log.values, score, detected, truth=log.label,
        threshold=threshold, title="t", units=UNITS, faults=log.faults,
    ), log  # fmt: skip


def test_axes_carry_units_and_faults_are_named():
    fig, log = _figure()
    axes = fig.axes
    for ax, name, unit in zip(axes, CHANNELS, UNITS):
        assert ax.get_ylabel() == f"{name}\n[{unit}]"
    names = {t.get_text() for t in axes[0].texts}
    assert names == {kind for kind, _, _ in log.faults}


def test_forecast_drawn_over_the_signal_and_detections_in_their_own_strip():
    fig, _ = _figure()
    signal, forecast = fig.axes[0].lines[:2]
    assert forecast.get_zorder() > signal.get_zorder()
    score_axis = fig.axes[len(CHANNELS)]  # a surprisal: linear, from 0 (not symlog)
    assert score_axis.get_yscale() == "linear" and score_axis.get_ylim()[0] == 0
    strip = fig.axes[-1]
    assert [t.get_text() for t in strip.get_yticklabels()] == ["detected", "true fault"]
    for ax in fig.axes[: len(CHANNELS)]:  # no detection ticks drawn inside data panels
        assert not ax.collections


def test_plot_report_writes_a_png(tmp_path):
    log = pump_log(400, seed=1)
    path = plot_report(
        str(tmp_path / "r.png"), CHANNELS, log.values, log.values, np.ones(400),
        np.zeros(400), truth=log.label, units=UNITS, faults=log.faults,
    )  # fmt: skip
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
