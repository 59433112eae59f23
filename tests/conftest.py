"""Shared fixtures: synthetic sensor CSVs and small exported models."""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import threading
import tty

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (the benchmarks are scripts, not a package; their
    folder goes on sys.path, as it is for a script, so that they can import each other)."""
    import importlib.util

    folder = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_signal(n: int = 1500, seed: int = 0) -> np.ndarray:
    """Three channels with periodic structure a forecaster can learn: (n, 3)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    a = np.sin(2 * np.pi * t / 40) + 0.05 * rng.standard_normal(n)
    b = 50.0 + 5.0 * np.cos(2 * np.pi * t / 25) + 0.2 * rng.standard_normal(n)
    c = 0.3 * a + np.sin(2 * np.pi * t / 60 + 1.0) + 0.05 * rng.standard_normal(n)
    return np.stack([a, b, c], axis=1)


def write_csv(path, values: np.ndarray, names=("a", "b", "c"), delimiter=",", time_col=True):
    with open(path, "w") as fh:
        header = (["timestamp"] if time_col else []) + list(names)
        fh.write(delimiter.join(header) + "\n")
        for i, row in enumerate(values):
            cells = ([f"2024-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}"] if time_col else []) + [
                f"{v:.6f}" for v in row
            ]
            fh.write(delimiter.join(cells) + "\n")
    return str(path)


@pytest.fixture
def synthetic_csv(tmp_path):
    return write_csv(tmp_path / "signal.csv", synthetic_signal())


def run_cli(*args: str, timeout: float = 300, env_extra: dict | None = None, pre: str = ""):
    """Run `python -m edgernn ARGS` in a subprocess; returns CompletedProcess (text)."""
    env = dict(os.environ)
    env.update(env_extra or {})
    if pre:
        code = f"{pre}\nimport sys\nfrom edgernn.cli import main\nsys.exit(main(sys.argv[1:]))"
        cmd = [sys.executable, "-c", code, *args]
    else:
        cmd = [sys.executable, "-m", "edgernn", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def make_model(cell="lstm", layers=1, hidden=16, channels=3, nonlinearity="tanh", seed=0):
    """A random-weight Forecaster with non-trivial normalisation (torch needed)."""
    import torch

    from edgernn.train.model import Forecaster, ModelConfig

    torch.manual_seed(seed)
    cfg = ModelConfig(
        n_channels=channels,
        cell=cell,
        hidden=hidden,
        layers=layers,
        nonlinearity=nonlinearity,
        channels=[f"ch{i}" for i in range(channels)],
    )
    model = Forecaster(cfg)
    model.set_normalisation(np.linspace(-1.0, 100.0, channels), np.linspace(0.5, 20.0, channels))
    return model.eval()


@pytest.fixture(scope="session")
def exported_models(tmp_path_factory):
    """Every cell x 1/2 layers exported once per session: {(cell, layers): (torch_model, path)}."""
    from edgernn.export.onnx_export import export_onnx

    out = {}
    base = tmp_path_factory.mktemp("models")
    for cell, nl in (("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")):
        for layers in (1, 2):
            model = make_model(cell, layers, nonlinearity=nl, seed=layers)
            path = str(base / f"{cell}-{nl}-{layers}.onnx")
            export_onnx(model, path)
            out[(cell if nl == "tanh" else "rnn-relu", layers)] = (model, path)
    return out


def assert_resumes_exactly(new_detector, step, n: int, cuts) -> None:
    """A detector saved at each cut (through JSON, like a state file) and rebuilt from
    its own params gives exactly the outputs of the unbroken run over samples 0..n-1.

    new_detector() -> a fresh Detector; step(det, t) -> a comparable output of sample t.
    """
    import json

    from edgernn.runtime.detector import Detector

    whole = new_detector()
    expected = [step(whole, t) for t in range(n)]
    for cut in cuts:
        first = new_detector()
        got = [step(first, t) for t in range(cut)]
        saved = json.loads(json.dumps(first.state_dict()))  # must survive a JSON file
        # the same backend: numpy and C agree to 1e-9, not to the last bit (numpy's own
        # SIMD exp / log differ from libm's by an ulp on some CPUs)
        resumed = Detector(**saved["params"], backend=first._requested)
        resumed.load_state_dict(saved)
        got += [step(resumed, t) for t in range(cut, n)]
        assert got == expected, f"cut at {cut}"


def random_start(model, batch: int, seed: int = 0, steps: int = 40):
    """A random non-zero state and a sequence in raw units: ({name: (L, B, H)}, (T, B, C))."""
    rng = np.random.default_rng(seed)
    state = {
        s.input: (0.5 * rng.standard_normal((s.layers, batch, s.hidden))).astype(np.float32)
        for s in model.meta.states
    }
    std, mean = np.asarray(model.meta.norm_std), np.asarray(model.meta.norm_mean)
    X = (rng.standard_normal((steps, batch, model.n_channels)) * std + mean).astype(np.float32)
    return state, X


def stream_outputs(model, state, X, batch):
    """Half the sequence through step(), half through run(); outputs normalised by std.
    batch None: the unbatched stream, on batch row 0 of state and X."""
    if batch is None:
        stream = model.stream(state={k: v[:, 0] for k, v in state.items()})
        X = X[:, 0]
    else:
        stream = model.stream(state=state, batch=batch)
    half = len(X) // 2
    y = np.concatenate([np.stack([stream.step(x) for x in X[:half]]), stream.run(X[half:])])
    return y / np.asarray(model.meta.norm_std, np.float32), stream.state


def parse_run_args(*argv: str) -> argparse.Namespace:
    """The arguments `edgernn run MODEL --port ...` would get (status lines off)."""
    from edgernn.firmware_bridge.live import add_serial_arguments

    p = argparse.ArgumentParser()
    p.add_argument("model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv")
    add_serial_arguments(p, src)
    p.add_argument("-o", "--out")
    return p.parse_args(["unused.onnx", "--status-interval", "0", *argv])


class ScriptedDevice:
    """A pty that, once a reader opens it, writes `wire` in `piece`-byte writes (None:
    one write) and hangs up when the reader has taken every byte."""

    def __init__(self, wire: bytes, piece: int | None = 97):
        from edgernn.firmware_bridge.emulator import mark_unconfigured

        master, slave = os.openpty()
        tty.setraw(slave)
        mark_unconfigured(slave)
        self.path = os.ttyname(slave)
        os.close(slave)
        self.master, self.wire, self.piece = master, wire, piece or max(1, len(wire))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        from edgernn.firmware_bridge.emulator import wait_until_configured, wait_until_read

        poller = select.poll()
        poller.register(self.master, select.POLLOUT)
        while poller.poll(20)[0][1] & select.POLLHUP:
            pass
        wait_until_configured(self.master)  # pyserial flushes its input just after that
        self._write()
        wait_until_read(self.path)
        os.close(self.master)

    def _write(self):
        for i in range(0, len(self.wire), self.piece):
            os.write(self.master, self.wire[i : i + self.piece])
