"""The streaming commands run numpy on one BLAS thread (edgernn/cli.py
single_threaded_blas): a worker thread that spins through every tiny product costs a
core and delays the next sample. Training keeps BLAS's threads; an explicit setting wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = (
    "import sys; from edgernn.cli import single_threaded_blas; "
    "single_threaded_blas(sys.argv[1:]); import os, numpy; "
    "print(os.environ.get('OPENBLAS_NUM_THREADS'), len(os.listdir('/proc/self/task')))"
)


def _run(*argv: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", CHECK, *argv], env={**clean, **env},
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.split()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc")
def test_streaming_commands_get_one_blas_thread_training_keeps_its_own():
    assert _run("run", "model.onnx", "--port", "/dev/ttyUSB0") == ["1", "1"]  # no worker
    assert _run("evaluate", "m.onnx")[0] == "1"
    assert _run("train", "data.csv")[0] == "None"
    assert _run("run", "m.onnx", OPENBLAS_NUM_THREADS="2")[0] == "2"
