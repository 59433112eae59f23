"""The detector kernel's and the formatter's load probes run once per library build."""

import os
import subprocess
import sys

import pytest

from edgernn.runtime.cstep import CStepUnavailable, compile_library

CODE = """
import numpy as np
from edgernn.runtime.detector import ckernel
calls = []
real = ckernel._probe
ckernel._probe = lambda lib: calls.append(1) or real(lib)
from edgernn.runtime import output
output.float32_repr_lines(np.ones((2, 3), np.float32))
print(len(calls), output._format_kernel() is not None)
"""


def _load(cache_dir) -> str:
    env = {**os.environ, "EDGERNN_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.fixture()
def cache(tmp_path):
    try:
        compile_library("int x;\n")  # a compiler is here
    except CStepUnavailable as e:
        pytest.skip(str(e))
    return tmp_path


def _probed(cache_dir) -> list:
    found = [os.path.join(d, f) for d, _, fs in os.walk(cache_dir) for f in fs]
    return [p for p in found if p.endswith(".probed")]


def test_a_probe_passed_is_not_run_again(cache):
    assert _load(cache) == ["1", "True"]  # built and probed
    (marker,) = _probed(cache)
    lines = open(marker).read().splitlines()
    assert sorted(line.split()[0] for line in lines) == ["detector", "format"]
    assert _load(cache) == ["0", "True"]  # the same library: no probe


def test_a_marker_for_other_bytes_or_versions_probes_again(cache):
    _load(cache)
    (marker,) = _probed(cache)
    lines = open(marker).read().splitlines()
    with open(marker, "w") as f:  # another build's digest, another numpy
        f.write("\n".join(line.replace(line.split()[1], "0" * 64) for line in lines) + "\n")
    assert _load(cache) == ["1", "True"]
    assert sorted(open(marker).read().splitlines()) == sorted(lines)


def test_an_unreadable_marker_only_means_probing(cache):
    _load(cache)
    (marker,) = _probed(cache)
    with open(marker, "wb") as f:
        f.write(b"\xff\xfe garbage")
    assert _load(cache) == ["1", "True"]
