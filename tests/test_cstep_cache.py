"""The C step's compile cache on a shared machine: private folder, verified libraries.

Real compiler, real dlopen. Damaged libraries are loaded in a subprocess where a
mistake would crash (SIGBUS) rather than fail an assertion.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from edgernn.runtime import cstep
from edgernn.runtime.model import Model

pytestmark = pytest.mark.skipif(cstep._compiler() is None, reason="no C compiler")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGERNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cstep, "_process_dir", None)
    return tmp_path / "cache" / "cstep"


def _net(path):
    return Model(path, backend="numpy")._engine.net


def _lib_path(net) -> str:
    source = cstep.generate_source(net)
    return os.path.join(
        cstep.cache_dir(), f"step_{cstep.library_key(cstep._compiler(), source)}.so"
    )


def _agrees_with_numpy(path) -> None:
    x = np.random.default_rng(3).standard_normal((20, 2, 3)).astype(np.float32) * 5
    c, ref = Model(path, backend="c"), Model(path, backend="numpy")
    assert c.backend == "c"
    np.testing.assert_allclose(c.stream(batch=2).run(x), ref.stream(batch=2).run(x), atol=1e-3)


def test_cache_folder_and_files_are_private_whatever_the_umask(exported_models, cache):
    old = os.umask(0)
    try:
        Model(exported_models[("gru", 1)][1], backend="c")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    for name in os.listdir(cache):
        assert not os.stat(cache / name).st_mode & 0o077, name


def test_an_old_0755_folder_is_tightened_and_a_world_writable_one_never_used(
    exported_models, cache
):
    path = exported_models[("lstm", 1)][1]
    os.makedirs(cache, mode=0o755)
    os.chmod(cache, 0o755)
    Model(path, backend="c")
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700

    for name in os.listdir(cache):
        os.unlink(cache / name)
    os.chmod(cache, 0o777)  # anyone could have put a library here
    directory, why = cstep.library_dir()
    assert directory != str(cache) and "accessible to other users" in why
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert Model(path, backend="c").backend == "c"
    assert os.listdir(cache) == []  # nothing built, nothing loaded from there


def test_no_home_builds_in_a_fresh_private_folder_never_a_shared_temp_one(
    exported_models, tmp_path
):
    """HOME=/nonexistent (a service user): a library planted in $TMPDIR/edgernn-cstep
    under any name is never loaded; the forecasts stay right."""
    shared = tmp_path / "tmp" / "edgernn-cstep"
    shared.mkdir(parents=True)
    os.chmod(shared, 0o777)
    plant = tmp_path / "plant.c"
    plant.write_text(
        "#include <stdlib.h>\n__attribute__((constructor)) static void own(void) "
        '{ system("touch ' + str(tmp_path / "PWNED") + '"); }\n'
    )
    net = _net(exported_models[("lstm", 1)][1])
    names = {f"step_{cstep.library_key(cstep._compiler(), cstep.generate_source(net))}.so"}
    names.add("step_" + "0" * 24 + ".so")
    for name in names:
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(shared / name), str(plant)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("EDGERNN_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME="/nonexistent", TMPDIR=str(tmp_path / "tmp"))
    code = (
        "import sys; from edgernn.runtime.model import Model; from edgernn.runtime import cstep;"
        "m = Model(sys.argv[1], backend='c'); print(m.backend, cstep._process_dir)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, exported_models[("lstm", 1)][1]],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    backend, folder = proc.stdout.split()
    assert backend == "c" and not folder.startswith(str(shared))
    assert not (tmp_path / "PWNED").exists()
    assert not os.path.exists(folder)  # the per-process folder goes with the process


_LOAD = (
    "import sys, numpy as np; from edgernn.runtime.model import Model;"
    "x = np.random.default_rng(3).standard_normal((20, 2, 3)).astype(np.float32) * 5;"
    "c, ref = Model(sys.argv[1], backend='c'), Model(sys.argv[1], backend='numpy');"
    "assert c.backend == 'c';"
    "err = np.abs(c.stream(batch=2).run(x) - ref.stream(batch=2).run(x)).max();"
    "print(err); assert err < 1e-3"
)


def _load_in_subprocess(path):
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD, path], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-800:])


def test_a_truncated_library_is_rebuilt_not_loaded(exported_models, cache):
    path = exported_models[("gru", 2)][1]
    lib = _lib_path(_net(path))
    Model(path, backend="c")
    data = open(lib, "rb").read()
    with open(lib, "wb") as f:
        f.write(data[:1000])  # the sidecar still records the whole file
    _load_in_subprocess(path)  # a dlopen of the stub would SIGBUS
    assert open(lib, "rb").read() == data  # rebuilt in place
    os.truncate(lib, 1000)
    os.unlink(lib + ".sha256")  # no sidecar at all: rebuilt too
    _load_in_subprocess(path)
    assert cstep.library_problem(lib) is None


def test_a_library_of_another_shape_under_the_name_is_rebuilt(exported_models, cache):
    """The LSTM library and its sidecar copied over the GRU one's: a consistent pair,
    but built from other source, so its step is never called."""
    lstm, gru = exported_models[("lstm", 1)][1], exported_models[("gru", 1)][1]
    for wrong, right in ((lstm, gru), (gru, lstm)):
        Model(wrong, backend="c")
        Model(right, backend="c")
        src, dst = _lib_path(_net(wrong)), _lib_path(_net(right))
        for suffix in ("", ".sha256"):
            with open(src + suffix, "rb") as f, open(dst + suffix, "wb") as g:
                g.write(f.read())
        _load_in_subprocess(right)
        assert open(dst, "rb").read() != open(src, "rb").read()


def test_a_library_computing_garbage_fails_the_probe_and_is_rebuilt(exported_models, cache):
    path = exported_models[("rnn", 1)][1]
    net = _net(path)
    source = cstep.generate_source(net)
    lib = _lib_path(net)
    os.makedirs(cache, mode=0o700, exist_ok=True)
    wrong = source.replace("ST(h_out + u, vtanh(LD(g + u)));", "ST(h_out + u, 0.0f * LD(g + u));")
    assert wrong != source
    marker, _ = cstep._source_marker(source)  # claims to be the right source
    (cache / "bad.c").write_text(wrong + marker)
    subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", lib, str(cache / "bad.c")], check=True)
    data = open(lib, "rb").read()
    open(lib + ".sha256", "w").write(f"{hashlib.sha256(data).hexdigest()} {len(data)}\n")
    assert cstep.library_problem(lib) is None  # every file check passes
    _agrees_with_numpy(path)
    assert open(lib, "rb").read() != data


def test_a_library_failing_twice_means_another_backend_with_the_reason(
    exported_models, cache, monkeypatch
):
    monkeypatch.setattr(cstep.CStep, "probe", lambda self: "differs by 9")
    path = exported_models[("lstm", 1)][1]
    with pytest.raises(cstep.CStepUnavailable, match="unusable: differs by 9"):
        Model(path, backend="c")
    model = Model(path)
    assert model.backend != "c" and "differs by 9" in model.fallback_reason
    assert not [n for n in os.listdir(cache) if n.endswith(".so")]  # not left to retry forever


def test_key_covers_cpu_and_compiler_not_hostname(monkeypatch):
    cc = cstep._compiler()
    base = cstep.library_key(cc, "int x;")
    monkeypatch.setattr(cstep.platform, "node", lambda: "raspberrypi-2")
    assert cstep.library_key(cc, "int x;") == base
    assert "flags" in cstep.cpu_identity() or "features" in cstep.cpu_identity()
    monkeypatch.setattr(cstep, "cpu_identity", lambda: "linux aarch64\ncpu part: 0xd03")
    pi3 = cstep.library_key(cc, "int x;")
    monkeypatch.setattr(cstep, "cpu_identity", lambda: "linux aarch64\ncpu part: 0xd08")
    assert len({base, pi3, cstep.library_key(cc, "int x;")}) == 3
    monkeypatch.setattr(cstep, "compiler_identity", lambda cc: "gcc 99")
    assert cstep.library_key(cc, "int x;") not in (base, pi3)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a 0500 folder")
def test_a_read_only_cache_folder_is_not_used(exported_models, cache):
    os.makedirs(cache, mode=0o700)
    os.chmod(cache, 0o500)
    try:
        directory, why = cstep.library_dir()
        assert directory != str(cache) and "not writable" in why
        assert Model(exported_models[("gru", 1)][1], backend="c").backend == "c"
    finally:
        os.chmod(cache, 0o700)


def test_a_loaded_library_survives_its_cache_file_damaged_in_place(exported_models, cache):
    """Pages of a loaded library are read from its file on demand: the process runs
    from a private copy, so truncating the cache file cannot SIGBUS it."""
    code = (
        "import os, sys, numpy as np; from edgernn.runtime.model import Model;"
        "from edgernn.runtime import cstep; m = Model(sys.argv[1], backend='c');"
        "lib = [os.path.join(cstep.cache_dir(), n) for n in os.listdir(cstep.cache_dir())"
        " if n.endswith('.so')][0]; os.truncate(lib, 1000);"
        "s = m.stream(); [s.step(np.ones(3, np.float32)) for _ in range(100)]; print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code, exported_models[("lstm", 2)][1]],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr)
