"""Tasks beyond forecasting: `--target` (a soft sensor) and `--task classify --label`.

Each trained model is exported through the parity gate and the exported graph, streamed
step by step with onnxruntime on a held-out file, must beat the task's baseline there:
predicting the training mean (regress), always answering the majority class (classify).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_csv

from edgernn.train import TrainConfig, train_files
from edgernn.train.checkpoint import load_checkpoint

pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

GESTURES = ("idle", "shake", "tilt", "circle")
RATE = 50.0  # Hz


def gesture_stream(n_segments: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """3-axis accelerometer (g) with a gesture label per sample: idle (gravity on z),
    shake (6-9 Hz along x), tilt (gravity rotating onto x), circle (~1 Hz in x/y)."""
    rng = np.random.default_rng(seed)
    xs, labels = [], []
    for _ in range(n_segments):
        g, n = int(rng.integers(len(GESTURES))), int(rng.integers(40, 80))
        t = np.arange(n) / RATE
        a = np.zeros((n, 3))
        a[:, 2] = 1.0
        if GESTURES[g] == "shake":
            a[:, 0] += 0.8 * np.sin(2 * np.pi * rng.uniform(6, 9) * t + rng.uniform(0, 6))
        elif GESTURES[g] == "tilt":
            angle = rng.choice([-1, 1]) * rng.uniform(0.6, 1.2) * np.minimum(t / 0.3, 1.0)
            a[:, 0], a[:, 2] = np.sin(angle), np.cos(angle)
        elif GESTURES[g] == "circle":
            phase = 2 * np.pi * rng.uniform(1.0, 1.5) * t + rng.uniform(0, 6)
            a[:, 0] += 0.5 * np.cos(phase)
            a[:, 1] += 0.5 * np.sin(phase)
        xs.append(a + 0.05 * rng.standard_normal((n, 3)))
        labels += [GESTURES[g]] * n
    return np.concatenate(xs), labels


def write_labelled(path, x: np.ndarray, labels, names=("ax", "ay", "az"), label="gesture"):
    with open(path, "w") as fh:
        fh.write(",".join(["time", *names, label]) + "\n")
        for i, (row, lab) in enumerate(zip(x, labels)):
            fh.write(",".join([f"{i / RATE:.2f}", *(f"{v:.5f}" for v in row), str(lab)]) + "\n")
    return str(path)


def soft_sensor(n: int, seed: int) -> np.ndarray:
    """Columns a, b, quality, noise: quality is a leaky integral of a * (b - 20) (it needs
    memory and both inputs); noise carries nothing."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    a = np.sin(2 * np.pi * t / 40 + rng.uniform(0, 6)) + 0.1 * rng.standard_normal(n)
    b = 20 + 3 * np.cos(2 * np.pi * t / 27) + 0.3 * rng.standard_normal(n)
    y = np.zeros(n)
    for i in range(1, n):
        y[i] = 0.9 * y[i - 1] + 0.1 * a[i] * (b[i] - 20)
    quality = 100 + 10 * y + 0.05 * rng.standard_normal(n)
    return np.stack([a, b, quality, rng.standard_normal(n)], axis=1)


def stream_graph(path: str, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
    """Run an exported graph one sample at a time (batch of one) from the zero state:
    every named output (T, K), and the metadata."""
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    states = json.loads(props["state"])
    outputs = [o["name"] for o in json.loads(props["outputs"])]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    state = {s["input"]: np.zeros([1 if d == "batch" else d for d in s["shape"]], np.float32)
             for s in states}  # fmt: skip
    names = outputs + [s["output"] for s in states]
    got = {n: [] for n in outputs}
    for row in x.astype(np.float32):
        result = dict(zip(names, sess.run(names, {props["input"]: row[None], **state})))
        for n in outputs:
            got[n].append(result[n][0])
        state = {s["input"]: result[s["output"]] for s in states}
    return {n: np.stack(v) for n, v in got.items()}, props


def _quiet(msg):
    pass


QUICK = dict(hidden=24, window=48, burn_in=4, batch_size=16, progress=False)


# --------------------------------------------------------------------------- classify
@pytest.fixture(scope="module")
def gesture_run(tmp_path_factory):
    from edgernn.export import export_run

    tmp = tmp_path_factory.mktemp("gestures")
    files = [write_labelled(tmp / f"train{i}.csv", *gesture_stream(40, seed=i)) for i in range(2)]
    cfg = TrainConfig(task="classify", label="gesture", epochs=12, lr=1e-2, **QUICK)
    run = train_files(files, cfg, str(tmp / "run"), log=_quiet)
    report = export_run(str(tmp / "run"), str(tmp / "gestures.onnx"))
    return run, report, str(tmp / "gestures.onnx")


def test_classifier_beats_majority_class_on_held_out_data_after_export(gesture_run):
    run, report, path = gesture_run
    assert report.max_abs <= 1e-5
    x, labels = gesture_stream(30, seed=99)  # never seen in training or validation
    outputs, props = stream_graph(path, x)
    classes = json.loads(props["classes"])
    assert props["task"] == "classify" and props["output"] == "probs"
    assert classes == sorted(GESTURES) == run.meta["classes"]
    probs = outputs["probs"]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(axis=1), outputs["logits"].argmax(axis=1))
    truth = np.array([classes.index(v) for v in labels])
    accuracy = float((probs.argmax(axis=1) == truth).mean())
    majority = classes.index(run.metrics["baseline_name"].split("(")[1].rstrip(")"))
    baseline = float((truth == majority).mean())
    assert accuracy > baseline + 0.25, (accuracy, baseline)
    m, b = run.metrics["model"], run.metrics["baseline"]  # the trainer's own validation
    assert m["accuracy"] > b["accuracy"] and m["macro_f1"] > b["macro_f1"]


def test_decision_layer_turns_the_exported_classifier_into_gesture_events(gesture_run):
    """Exported graph -> probabilities -> ClassEvents: the held-out stream's gestures."""
    from edgernn.runtime.decision import ClassEvents

    _, _, path = gesture_run
    x, labels = gesture_stream(30, seed=99)
    outputs, props = stream_graph(path, x)
    times = np.arange(len(x)) / RATE
    decide = ClassEvents(json.loads(props["classes"]), min_samples=5, background="idle")
    events = decide.run(outputs["probs"], times)
    truth, start = [], 0  # the true gestures: runs of one label other than idle
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            if labels[start] != "idle":
                truth.append((labels[start], times[start], times[i - 1]))
            start = i

    def overlaps(e, g):
        return e.label == g[0] and e.start <= g[2] and e.end >= g[1]

    found = sum(any(overlaps(e, g) for e in events) for g in truth)
    false = sum(not any(overlaps(e, g) for g in truth) for e in events)
    assert found >= 0.8 * len(truth) and false <= 2, (found, len(truth), false)
    assert all(isinstance(e.start, float) and e.samples >= 5 for e in events)


def read_rows(path: str) -> list[dict]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_edgernn_run_writes_class_probabilities_and_labels(gesture_run, tmp_path):
    from edgernn.cli import main

    run, _, path = gesture_run
    x, labels = gesture_stream(30, seed=99)
    held = write_labelled(tmp_path / "held.csv", x, labels)
    assert main(["run", path, "--csv", held, "-o", str(tmp_path / "out.csv")]) == 0
    rows = read_rows(str(tmp_path / "out.csv"))
    assert len(rows) == len(labels)
    assert {f"p_{c}" for c in GESTURES} | {"label"} <= set(rows[0])
    accuracy = np.mean([r["label"] == v for r, v in zip(rows, labels)])
    majority = run.metrics["baseline_name"].split("(")[1].rstrip(")")
    assert accuracy > np.mean([v == majority for v in labels]) + 0.25


@pytest.mark.parametrize("backend", ["onnxruntime", "numpy"])
def test_runtime_model_streams_the_classifier_like_onnxruntime(gesture_run, backend):
    from edgernn.runtime import Model

    _, _, path = gesture_run
    x, _ = gesture_stream(4, seed=98)
    reference, _ = stream_graph(path, x)
    stream = Model(path, backend=backend).stream()
    probs = np.stack([stream.step(row) for row in x.astype(np.float32)])
    np.testing.assert_allclose(probs, reference["probs"], atol=1e-5)
    np.testing.assert_allclose(stream.outputs["logits"], reference["logits"][-1], atol=1e-4)


def test_classifier_checkpoint_describes_itself(gesture_run):
    run, _, _ = gesture_run
    weights, meta, val_errors = load_checkpoint(run.out_dir)
    assert meta["task"] == "classify" and meta["model"]["task"] == "classify"
    assert meta["channels"] == ["ax", "ay", "az"]  # the label column is not an input
    assert meta["model"]["classes"] == sorted(GESTURES) and not meta["model"]["residual"]
    assert weights["head.weight"].shape == (4, 24) and val_errors is None
    assert np.array(meta["metrics"]["model"]["confusion"]).sum() == meta["metrics"][
        "validation_rows"
    ]


def test_integer_labels_are_classes_in_numeric_order(tmp_path):
    x, labels = gesture_stream(16, seed=3)
    codes = {"idle": 10, "shake": 2, "tilt": 2, "circle": 1}  # ints, a numeric label column
    path = write_labelled(tmp_path / "codes.csv", x, [codes[v] for v in labels], label="code")
    cfg = TrainConfig(task="classify", label="code", epochs=1, **QUICK)
    run = train_files([path], cfg, str(tmp_path / "run"), log=_quiet)
    assert run.meta["classes"] == ["1", "2", "10"]  # numerically, not as text
    assert run.meta["channels"] == ["ax", "ay", "az"]  # a numeric label is still no input


def test_classifier_resume_is_bit_identical(tmp_path):
    path = write_labelled(tmp_path / "g.csv", *gesture_stream(20, seed=6))
    kw = dict(QUICK, label="gesture", bptt="tbptt", patience=100)
    full = train_files([path], TrainConfig(epochs=3, **kw), str(tmp_path / "a"), log=_quiet)
    train_files([path], TrainConfig(epochs=1, **kw), str(tmp_path / "b"), log=_quiet)
    resumed = train_files([path], TrainConfig(epochs=3, **kw), str(tmp_path / "b"), log=_quiet,
                          resume=True)  # fmt: skip
    for k in full.weights:
        np.testing.assert_array_equal(full.weights[k], resumed.weights[k])
    assert [h["epoch"] for h in resumed.metrics["history"]] == [1, 2, 3]
    assert "val_ce" in resumed.metrics["history"][0]


# ---------------------------------------------------------------------------- regress
@pytest.mark.parametrize(
    "cfg",
    [
        dict(cell="lstm", epochs=8, **QUICK),
        dict(cell="gru", bptt="tbptt", epochs=8, **QUICK),
        dict(cell="esn", hidden=100, input_scale=0.2),  # a gentler drive: less saturation
    ],
    ids=["lstm-window", "gru-tbptt", "esn-ridge"],
)
def test_soft_sensor_beats_training_mean_on_held_out_data_after_export(tmp_path, cfg):
    from edgernn.export import export_run

    names = ("a", "b", "quality", "noise")
    train = write_csv(tmp_path / "train.csv", soft_sensor(1500, seed=0), names=names)
    run = train_files([train], TrainConfig(targets=["quality"], **cfg), str(tmp_path / "r"),
                      log=_quiet)  # fmt: skip
    assert run.meta["task"] == "regress" and run.meta["channels"] == ["a", "b", "noise"]
    assert run.metrics["model"]["rmse"] < 0.9 * run.metrics["baseline"]["rmse"]
    report = export_run(str(tmp_path / "r"), str(tmp_path / "soft.onnx"))
    assert report.max_abs <= 1e-5
    held_out = soft_sensor(600, seed=7)
    outputs, props = stream_graph(str(tmp_path / "soft.onnx"), held_out[:, [0, 1, 3]])
    assert json.loads(props["targets"]) == ["quality"] and props["output"] == "y"
    truth = held_out[200:, 2]  # after a warm-up: the leaky integral needs a few steps
    rmse = np.sqrt(np.mean((outputs["y"][200:, 0] - truth) ** 2))
    mean_rmse = np.sqrt(np.mean((run.meta["target_norm"]["mean"][0] - truth) ** 2))
    assert rmse < 0.8 * mean_rmse, (rmse, mean_rmse)


def test_cli_soft_sensor_train_export_run(tmp_path, capsys):
    from edgernn.cli import main

    names = ("a", "b", "quality", "noise")
    train = write_csv(tmp_path / "train.csv", soft_sensor(1500, seed=0), names=names)
    held_out = soft_sensor(600, seed=7)
    held = write_csv(tmp_path / "held.csv", held_out, names=names)
    run, model, out = (str(tmp_path / n) for n in ("run", "soft.onnx", "out.csv"))
    assert main(["train", train, "--out", run, "--target", "quality", "--cell", "esn",
                 "--hidden", "100", "--input-scale", "0.2"]) == 0  # fmt: skip
    assert "better than predicting the training mean" in capsys.readouterr().err
    assert main(["export", run, "-o", model]) == 0
    assert main(["run", model, "--csv", held, "-o", out]) == 0
    pred = np.array([float(r["quality_pred"]) for r in read_rows(out)])
    truth = held_out[:, 2]
    assert np.sqrt(np.mean((pred[200:] - truth[200:]) ** 2)) < 0.8 * np.std(truth[200:])


def test_several_targets(tmp_path):
    names = ("a", "b", "quality", "noise")
    path = write_csv(tmp_path / "d.csv", soft_sensor(800, seed=1), names=names)
    cfg = TrainConfig(targets=["quality", "b"], cell="esn", hidden=60)
    run = train_files([path], cfg, str(tmp_path / "r"), log=_quiet)
    assert run.meta["channels"] == ["a", "noise"] and run.meta["targets"] == ["quality", "b"]
    assert run.weights["head.weight"].shape == (2, 60)
    assert set(run.metrics["model"]["rmse_raw"]) == {"quality", "b"}


# ------------------------------------------------------------------- the parity gate
def test_parity_gate_catches_a_miswired_state(gesture_run):
    """The gate is real: the same graph with its LSTM state pairs crossed fails it."""
    from edgernn.export.run import load_forecaster
    from edgernn.export.tasks import check_task_parity

    run, _, path = gesture_run
    model, _, _ = load_forecaster(run.out_dir)
    proto = onnx.load(path)
    for p in proto.metadata_props:
        if p.key == "state":
            states = json.loads(p.value)
            states[0]["output"], states[1]["output"] = states[1]["output"], states[0]["output"]
            p.value = json.dumps(states)
    crossed = str(run.out_dir) + "/crossed.onnx"
    onnx.save(proto, crossed)
    assert check_task_parity(model, crossed).max_abs_state > 1e-2


# ---------------------------------------------------------------------- bad flags
def _error(capsys, *argv) -> str:
    from edgernn.cli import main

    assert main(list(argv)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgernn: error: ") and "\n" not in err, err
    return err


@pytest.fixture
def gesture_csv(tmp_path):
    return write_labelled(tmp_path / "g.csv", *gesture_stream(10, seed=4))


def test_bad_task_flags_are_one_line_errors(tmp_path, capsys, gesture_csv):
    out = str(tmp_path / "run")
    base = ["train", gesture_csv, "--out", out, "--epochs", "1", "--no-progress"]
    assert "no --label column 'mood'" in _error(capsys, *base, "--label", "mood")
    assert "also an input channel" in _error(
        capsys, *base, "--label", "gesture", "--channels", "ax,gesture"
    )
    assert "--target applies to --task regress" in _error(
        capsys, *base, "--task", "classify", "--label", "gesture", "--target", "ax"
    )
    assert "needs --target" in _error(capsys, *base, "--task", "regress")
    assert "needs --label" in _error(capsys, *base, "--task", "classify")
    assert "esn cannot classify" in _error(capsys, *base, "--label", "gesture", "--cell", "esn")
    assert "--horizon applies to forecasting" in _error(
        capsys, *base, "--target", "az", "--horizon", "3"
    )
    assert "also an input channel" in _error(
        capsys, *base, "--target", "az", "--channels", "ax,az"
    )
    assert "no --target column 'depth'" in _error(capsys, *base, "--target", "depth")


def test_a_single_class_is_a_one_line_error(tmp_path, capsys):
    x, _ = gesture_stream(6, seed=5)
    path = write_labelled(tmp_path / "one.csv", x, ["idle"] * len(x))
    err = _error(capsys, "train", path, "--out", str(tmp_path / "r"), "--label", "gesture",
                 "--no-progress")  # fmt: skip
    assert "single class ('idle')" in err


def test_export_refuses_unrolled_for_a_classifier(gesture_run, tmp_path):
    from edgernn.errors import ExportError
    from edgernn.export import export_run

    run, _, _ = gesture_run
    with pytest.raises(ExportError, match="forecasters only"):
        export_run(run.out_dir, str(tmp_path / "u.onnx"), unrolled=True)


def test_edgernn_run_decides_gesture_events_with_the_decision_layer(gesture_run, tmp_path,
                                                                    capsys):  # fmt: skip
    from edgernn.cli import main

    _, _, path = gesture_run
    x, labels = gesture_stream(30, seed=99)
    held = write_labelled(tmp_path / "held.csv", x, labels)
    out = str(tmp_path / "out.csv")
    argv = ["run", path, "--csv", held, "-o", out, "--events", "min-samples=5,background=idle"]
    assert main(argv) == 0
    rows = read_rows(out)
    err = capsys.readouterr().err
    events = [ln for ln in err.splitlines() if ln.startswith("edgernn: event ")]
    gestures = sum(1 for i in range(len(labels)) if labels[i] != "idle"
                   and (i == 0 or labels[i - 1] != labels[i]))  # fmt: skip
    assert 0.8 * gestures <= len(events) <= 2 * gestures, (len(events), gestures)
    assert "from 0." in events[0] or "from 1." in events[0]  # times from the time column
    assert {r["event"] for r in rows} <= set(GESTURES)
    # The decided class agrees with the truth at least as often as the raw argmax label.
    decided = np.mean([r["event"] == v for r, v in zip(rows, labels)])
    assert decided >= np.mean([r["label"] == v for r, v in zip(rows, labels)]) - 0.05


def test_run_events_settings_are_checked(gesture_run, tmp_path, capsys):
    from edgernn.cli import main

    _, _, path = gesture_run
    x, labels = gesture_stream(4, seed=5)
    held = write_labelled(tmp_path / "held.csv", x, labels)
    for bad in ("bogus=1", "enter=high", "enter=0.3,exit=0.5", "background=nothing"):
        assert main(["run", path, "--csv", held, "--events", bad]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("edgernn: error: --events:"), err
