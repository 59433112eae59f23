"""The classifier decision layer's contract: hysteresis, minimum duration, events, times."""

from __future__ import annotations

import numpy as np
import pytest

from edgernn.runtime.decision import ClassEvent, ClassEvents

CLASSES = ["idle", "shake", "tilt"]


def probs_for(shake: list[float]) -> np.ndarray:
    """Steps where 'shake' has the given probability and 'idle' the rest."""
    s = np.asarray(shake, dtype=float)
    return np.stack([1.0 - s, s, np.zeros_like(s)], axis=1)


def labels_of(decide: ClassEvents, probs, times=None) -> list:
    times = times if times is not None else [None] * len(probs)
    return [decide.step(p, t).label for p, t in zip(probs, times)]


def test_hysteresis_enter_high_hold_until_below_exit():
    decide = ClassEvents(CLASSES, enter=0.6, exit=0.4, min_samples=1, background="idle")
    # 0.5 does not open (below enter), 0.7 opens, 0.45 / 0.5 hold (above exit), 0.3 ends it
    labels = labels_of(decide, probs_for([0.5, 0.7, 0.45, 0.5, 0.3, 0.5]))
    assert labels == ["idle", "shake", "shake", "shake", "idle", "idle"]


def test_event_fields_and_end_is_the_last_step_held():
    decide = ClassEvents(CLASSES, min_samples=2, background="idle")
    decisions = [decide.step(p) for p in probs_for([0.1, 0.8, 0.9, 0.5, 0.2, 0.1])]
    ended = [d.event for d in decisions if d.event is not None]
    assert ended == [ClassEvent("shake", start=1, end=3, peak=0.9, samples=3)]
    assert decisions[4].event is not None  # reported at the step that let go
    assert ended[0].to_dict() == {"class": "shake", "start": 1, "end": 3, "peak": 0.9,
                                  "samples": 3}  # fmt: skip


def test_minimum_duration_drops_short_events_and_delays_the_label():
    decide = ClassEvents(CLASSES, min_samples=3, background="idle")
    probs = probs_for([0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.1])
    decisions = [decide.step(p) for p in probs]
    assert [d.label for d in decisions] == ["idle", "idle", "idle", "idle", "idle", "shake",
                                            "shake", "idle"]  # fmt: skip
    started = [(i, d.started) for i, d in enumerate(decisions) if d.started is not None]
    assert len(started) == 1 and started[0][0] == 5 and started[0][1].start == 3
    events = [d.event for d in decisions if d.event is not None]
    assert [(e.start, e.end, e.samples) for e in events] == [(3, 6, 4)]  # the 2-step one: dropped


def test_times_are_the_given_values_else_sample_indices():
    probs = probs_for([0.1, 0.9, 0.9, 0.9, 0.1])
    times = ["10:00:00", "10:00:01", "10:00:02", "10:00:03", "10:00:04"]
    timed = ClassEvents(CLASSES, background="idle").run(probs, times)
    assert [(e.start, e.end) for e in timed] == [("10:00:01", "10:00:03")]
    untimed = ClassEvents(CLASSES, background="idle").run(probs)
    assert [(e.start, e.end) for e in untimed] == [(1, 3)]
    decide = ClassEvents(CLASSES)
    decide.step(probs[0], 0.0)
    with pytest.raises(ValueError, match="every step or with none"):
        decide.step(probs[1])


def test_flush_closes_the_open_event_and_resets():
    decide = ClassEvents(CLASSES, min_samples=2, background="idle")
    for p in probs_for([0.9, 0.95, 0.8]):
        assert decide.step(p).event is None
    assert decide.flush() == ClassEvent("shake", 0, 2, 0.95, 3)
    assert decide.label == "idle" and decide.flush() is None
    decide.step(probs_for([0.9])[0])
    assert decide.flush() is None  # one step: shorter than min_samples
    assert decide.step(probs_for([0.9])[0]).started is None  # indices restart at 0
    assert decide.flush() is None


def test_background_never_forms_events_and_none_means_no_label():
    idle = probs_for([0.0] * 5)  # idle at probability 1 throughout
    assert ClassEvents(CLASSES, background="idle").run(idle) == []
    decide = ClassEvents(CLASSES, min_samples=1)  # no background: idle is a class like others
    assert decide.step(idle[0]).label == "idle"
    assert ClassEvents(CLASSES, min_samples=1).step([0.4, 0.3, 0.3]).label is None


def test_switching_class_ends_one_event_and_opens_the_next():
    decide = ClassEvents(CLASSES, min_samples=1, background="idle")
    steps = [[0.1, 0.9, 0.0], [0.1, 0.5, 0.4], [0.1, 0.2, 0.7], [0.1, 0.1, 0.8]]
    decisions = [decide.step(p) for p in steps]
    assert [d.label for d in decisions] == ["shake", "shake", "tilt", "tilt"]
    assert decisions[2].event == ClassEvent("shake", 0, 1, 0.9, 2)
    assert decisions[2].started == ClassEvent("tilt", 2, 2, 0.7, 1)
    assert decide.flush() == ClassEvent("tilt", 2, 3, 0.8, 2)


def test_bad_settings_and_inputs_are_refused():
    for kwargs in (dict(enter=0.4, exit=0.6), dict(exit=0.0), dict(enter=1.5),
                   dict(min_samples=0), dict(background="walk")):  # fmt: skip
        with pytest.raises(ValueError):
            ClassEvents(CLASSES, **kwargs)
    with pytest.raises(ValueError):
        ClassEvents(["a", "a"])
    decide = ClassEvents(CLASSES)
    with pytest.raises(ValueError, match="expected 3 probabilities"):
        decide.step([0.5, 0.5])
    with pytest.raises(ValueError, match="finite"):
        decide.step([np.nan, 0.5, 0.5])


def test_from_meta_takes_a_classifiers_classes():
    from edgernn.runtime.metadata import ModelMeta, OutputSpec

    meta = ModelMeta(task="classify", channels=["ax"], output="probs", classes=CLASSES,
                     outputs=[OutputSpec("probs", (None, 3))])  # fmt: skip
    decide = ClassEvents.from_meta(meta, background="idle", min_samples=1)
    assert decide.classes == CLASSES and decide.step([0.1, 0.9, 0.0]).label == "shake"
    with pytest.raises(ValueError, match="need a classifier"):
        ClassEvents.from_meta(ModelMeta(cell="lstm", layers=1, hidden=2, channels=["a"]))
