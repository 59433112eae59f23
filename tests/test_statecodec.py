"""State documents with packed arrays: the same state, bit for bit, far smaller."""

import json
import math

import numpy as np
import pytest

from edgernn.runtime.statecodec import MIN_PACKED, pack, unpack


def _same(a, b):
    """Equal with the exact types and bits (NaN equal to NaN)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    return a == b


def test_round_trip_is_exact_for_every_kind_of_value():
    rng = np.random.default_rng(0)
    doc = {
        "matrix": rng.standard_normal((70, 65)).tolist(),
        "tiny": (rng.standard_normal(200) * 1e-300).tolist(),
        "special": [math.nan, math.inf, -math.inf, -0.0] * 20,
        "counts": rng.integers(-(2**62), 2**62, 300).tolist(),
        "cube": rng.standard_normal((4, 5, 6)).tolist(),
        "small": [1.0, 2.0],
        "mixed": [1, 2.0] * 50,
        "bools": [True, False] * 50,
        "with_none": [None, 1.0] * 50,
        "ragged": [[1.0] * 40, [1.0] * 39],
        "huge_int": [2**70] * 100,
        "nested": {"a": [{"b": list(map(float, range(100)))}], "s": "text", "n": None},
        "empty": [],
    }
    packed = pack(doc)
    assert _same(unpack(json.loads(json.dumps(packed))), doc)
    for key in ("matrix", "tiny", "special", "counts", "cube"):
        assert "__array__" in packed[key], key
    for key in ("small", "mixed", "bools", "with_none", "ragged", "huge_int", "empty"):
        assert packed[key] == doc[key], key


def test_unpacked_documents_pass_through():
    doc = {"a": [[1.0, 2.0]] * MIN_PACKED, "b": 3}
    assert unpack(doc) == doc


@pytest.mark.parametrize(
    "bad",
    [
        {"__array__": "f8", "shape": [3], "zlib": "not base64!"},
        {"__array__": "f8", "shape": [3], "zlib": "eJwDAAAAAAE="},  # zlib of b"": 0 != 3
        {"__array__": "c16", "shape": [1], "zlib": ""},
        {"__array__": "f8", "shape": "3", "zlib": ""},
    ],
)
def test_damaged_packed_arrays_are_a_value_error(bad):
    with pytest.raises(ValueError):
        unpack({"x": bad})


def test_a_monitor_state_packs_small_and_resumes_exactly(exported_models):
    from edgernn.runtime import Model
    from edgernn.runtime.detector import Detector
    from edgernn.runtime.monitor import Monitor

    model = Model(exported_models[("lstm", 1)][1])
    rng = np.random.default_rng(1)
    X = 30 * np.sin(np.arange(900)[:, None] / 20 + np.arange(3)) + 0.05 * rng.standard_normal((900, 3))
    times = 1.7e9 + 60.0 * np.arange(900)
    first = Monitor(model, Detector.from_meta(model))
    for x, t in zip(X[:600], times[:600]):
        first.process(x, time=float(t))
    state = first.state_dict()
    text = json.dumps(pack(state))
    assert len(text) < len(json.dumps(state)) / 2
    resumed = Monitor(model, Detector.from_meta(model), state=unpack(json.loads(text)))
    for x, t in zip(X[600:], times[600:]):
        a, b = first.process(x, time=float(t)), resumed.process(x, time=float(t))
        assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def test_serial_state_files_are_packed_and_plain_ones_still_load(exported_models, tmp_path):
    from edgernn.firmware_bridge.live import StateFile, model_fingerprint
    from edgernn.runtime import Model
    from edgernn.runtime.detector import Detector
    from edgernn.runtime.monitor import Monitor

    model = Model(exported_models[("lstm", 1)][1])
    mon = Monitor(model, Detector.from_meta(model))
    for i in range(300):
        mon.process(30 * np.sin(np.arange(3) + i / 9.0), time=1.7e9 + 60.0 * i)
    state = mon.state_dict()
    sf = StateFile(str(tmp_path / "state.json"), model_fingerprint(model.path))
    sf.save(state, 300)
    text = (tmp_path / "state.json").read_text()
    assert '"__array__"' in text
    loaded, line = sf.load()
    assert "resumed" in line and _same(loaded, json.loads(json.dumps(state)))
    plain = json.loads(text)
    plain["monitor"] = state  # as an older edgernn wrote it: numbers only
    (tmp_path / "state.json").write_text(json.dumps(plain))
    loaded, line = sf.load()
    assert "resumed" in line and _same(loaded, json.loads(json.dumps(state)))
