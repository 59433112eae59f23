"""A generated, dependency-free C step function, compiled at load time.

The numpy backend recognises the graph as a `Network`; this module writes C for
that network's *shape* (cell, layers, hidden, channels, residual) and compiles it
with the system C compiler into a shared library cached in a private (0700, owner
checked) folder under `$EDGERNN_CACHE_DIR` (default `~/.cache/edgernn`), keyed by
compiler, flags, source and CPU features, and proved against the numpy step on every
load (see "compiling and loading" below). Weights are not baked in: they
are passed as one float buffer, so every model of the same shape shares one
library and a second load costs a dlopen, not a compile.

Why it is fast: one Python->C call per sample (ctypes, the arguments packed once
into a context struct), no allocation, state double-buffered (the step reads one
buffer and writes the other, so a rejected sample leaves the state untouched),
each layer one register-blocked matmul over [x, h] written with GCC/Clang vector
extensions (AVX2 on x86, NEON on the Pi), and tanh/sigmoid as the same rational
approximation onnxruntime's MLAS uses (abs error < 4e-7).

No compiler, a failed compile or a failed dlopen raises `CStepUnavailable`; the
auto backend then falls back to onnxruntime or numpy.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import itertools
import os
import platform
import shlex
import shutil
import stat
import sys
import tempfile
from typing import Optional

import numpy as np

from edgernn.errors import EdgernnError
from edgernn.runtime.csource import (  # noqa: F401  (re-exported for callers and tests)
    _CELL_BODIES,
    _PRELUDE,
    MR,
    NR,
    ROWS,
    _aligned_zeros,
    _gemm_source,
    _layouts,
    _pad,
    generate_source,
    pack_params,
    scratch_size,
)
from edgernn.runtime.numpy_backend import Network, fused_step


class CStepUnavailable(EdgernnError):
    """No working C compiler (or the compiled step failed to load)."""


# ----------------------------------------------------------------------------------
# compiling and loading
#
# A shared library is code that runs in this process the moment it is loaded, so the
# cache is treated like a private key: a folder owned by this user with no group/other
# access, checked before every use. Without one, each process builds in its own fresh
# mkdtemp folder. Libraries are written with fsync + rename beside a sha256 sidecar;
# before a dlopen the file must be ours, sized and ELF as recorded, and match the
# digest (a truncated .so would otherwise SIGBUS the process on load, every start).
# After the dlopen the library must carry the digest of the source it was built from
# (a library of another shape is never called) and compute what the numpy step does
# on a probe; one that fails is deleted and rebuilt once.


def _compiler() -> Optional[list[str]]:
    cc = os.environ.get("CC", "cc")
    parts = shlex.split(cc)
    if not parts or shutil.which(parts[0]) is None:
        return None
    return parts


def cache_dir() -> str:
    base = os.environ.get("EDGERNN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "edgernn",
    )
    return os.path.join(base, "cstep")


_FLAG_SETS = (["-O3", "-march=native"], ["-O3"])
_GROUP_OTHER = 0o077
_process_dir: Optional[str] = None  # the mkdtemp fallback, one per process


def _euid() -> Optional[int]:
    return os.geteuid() if hasattr(os, "geteuid") else None


def private_dir_problem(path: str) -> Optional[str]:
    """Why `path` is not a folder only this user can use (None when it is)."""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"{path}: {e.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a folder"
    euid = _euid()
    if euid is not None and st.st_uid != euid:
        return f"{path} is owned by uid {st.st_uid}, not this user ({euid})"
    if euid is not None and st.st_mode & _GROUP_OTHER:
        return f"{path} is accessible to other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _make_private(path: str) -> Optional[str]:
    """Create (or tighten) `path` as a 0700 folder of ours; None on success, else why not."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)  # mkdir's mode is cut by the umask; chmod is not
        except FileExistsError:
            st = os.stat(path)
            # An older edgernn made this folder 0755: still ours and never writable by
            # anyone else, so it can be tightened. A group/other-writable one cannot be
            # trusted (anything could have been put there) and is not used.
            if stat.S_ISDIR(st.st_mode) and st.st_uid == _euid() and not st.st_mode & 0o022:
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~_GROUP_OTHER)
    except OSError as e:
        return f"cannot create {path} ({e.strerror})"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    return private_dir_problem(path)


def library_dir() -> tuple[str, Optional[str]]:
    """(the folder libraries are built in and loaded from, why the cache is not used)."""
    global _process_dir
    directory = cache_dir()
    problem = _make_private(directory)
    if problem is None:
        return directory, None
    if _process_dir is None or private_dir_problem(_process_dir) is not None:
        try:
            _process_dir = tempfile.mkdtemp(prefix="edgernn-cstep-")  # 0700, ours alone
        except OSError as e:
            raise CStepUnavailable(
                f"no private folder to build the C step in ({problem}; mkdtemp: {e.strerror})"
            ) from e
        atexit.register(shutil.rmtree, _process_dir, True)
    return _process_dir, problem


@functools.lru_cache(maxsize=8)
def _compiler_version(path: str, stamp: tuple) -> str:
    import subprocess

    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    return proc.stdout + proc.stderr


def compiler_identity(cc: list[str]) -> str:
    """The compiler's resolved path, arguments and `--version` output."""
    path = os.path.realpath(shutil.which(cc[0]) or cc[0])
    try:
        st = os.stat(path)
        stamp: tuple = (st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = ()
    return f"{path}\n{shlex.join(cc)}\n{_compiler_version(path, stamp)}"


_CPU_KEYS = ("flags", "features", "model name", "cpu implementer", "cpu architecture",
             "cpu variant", "cpu part", "cpu revision")  # fmt: skip


def cpu_identity() -> str:
    """What -march=native code depends on: the CPU's feature flags and model (every
    Raspberry Pi is called `raspberrypi`, so the hostname says nothing)."""
    found: set[str] = set()
    try:
        with open("/proc/cpuinfo", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() in _CPU_KEYS:
                    found.add(f"{key.strip().lower()}: {' '.join(sorted(value.split()))}")
    except OSError:
        pass
    return f"{sys.platform} {platform.machine()}\n" + "\n".join(sorted(found))


def library_key(cc: list[str], source: str) -> str:
    h = hashlib.sha256()
    for part in (compiler_identity(cc), repr(_FLAG_SETS), source, cpu_identity()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def _source_marker(source: str) -> tuple[str, str]:
    """(C defining the symbol that names the source, the digest it holds)."""
    digest = hashlib.sha256(source.encode()).hexdigest()
    return f'\nconst char edgernn_source_sha256[65] = "{digest}";\n', digest


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not possible everywhere (Windows); the renames are still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_durable(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


ELF_MAGIC = b"\x7fELF"


def library_problem(lib: str) -> Optional[str]:
    """Why the cached `lib` must not be loaded (None when it may be)."""
    try:
        st = os.lstat(lib)
        with open(lib + ".sha256") as f:
            recorded = f.read().split()
    except OSError as e:
        return f"{os.path.basename(e.filename or lib)}: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    euid = _euid()
    if euid is not None and (st.st_uid != euid or st.st_mode & 0o022):
        return "not owned by this user, or writable by others"
    if len(recorded) != 2 or recorded[1] != str(st.st_size):
        return f"size {st.st_size} differs from the recorded one"
    if sys.platform.startswith("linux"):
        with open(lib, "rb") as f:
            if f.read(4) != ELF_MAGIC:
                return "not an ELF file"
    if _sha256_file(lib) != recorded[0]:
        return "contents differ from the recorded sha256"
    return None


def remove_library(lib: str) -> None:
    for path in (lib, lib + ".sha256"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class _Locked:
    """An exclusive flock on `path` while building (two processes build a key once)."""

    def __init__(self, path: str):
        self.path, self.fd = path, None

    def __enter__(self):
        try:
            import fcntl

            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass  # no flock here: the renames alone keep every file whole
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)


def compile_library(source: str, rebuild: bool = False, extra_flags: tuple = ()) -> str:
    """Path of the verified shared library for `source`, compiling it on the first use
    (or when the cached one fails its checks, or `rebuild`). `extra_flags` (include
    folders) go after the optimisation flags and into the cache key."""
    cc = _compiler()
    if cc is None:
        raise CStepUnavailable("no C compiler found (install gcc or set CC)")
    directory, _ = library_dir()
    keyed = source if not extra_flags else f"{source}\n/* {shlex.join(extra_flags)} */\n"
    lib = os.path.join(directory, f"step_{library_key(cc, keyed)}.so")
    try:
        with _Locked(lib + ".lock"):
            if not rebuild and library_problem(lib) is None:
                return lib
            remove_library(lib)
            _build(cc, source, directory, lib, list(extra_flags))
    except OSError as e:  # the folder filled up or went away mid-build
        raise CStepUnavailable(f"building the C step in {directory} failed ({e.strerror})") from e
    return lib


def _build(
    cc: list[str], source: str, directory: str, lib: str, extra: Optional[list[str]] = None
) -> None:
    import subprocess  # here, not at the top: a cached load never runs the compiler

    marker, _ = _source_marker(source)
    errors = []
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        src = os.path.join(tmp, "step.c")
        with open(src, "w") as f:
            f.write(source + marker)
        for flags in _FLAG_SETS:
            out = os.path.join(tmp, "step.so")
            cmd = [*cc, *flags, *(extra or []), "-shared", "-fPIC", "-o", out, src]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as e:
                errors.append(str(e))
                continue
            if proc.returncode == 0:
                with open(out, "rb") as f:
                    data = f.read()
                digest = hashlib.sha256(data).hexdigest()
                _write_durable(lib, data)
                _write_durable(lib + ".sha256", f"{digest} {len(data)}\n".encode())
                _fsync_dir(directory)
                return
            errors.append((proc.stderr.strip().splitlines() or ["failed"])[-1])
    raise CStepUnavailable(f"compiling the C step failed: {errors[-1][:160]}")


def _fresh_copy(lib: str) -> str:
    """A private copy of the verified `lib` under a name never loaded before (see
    _dlopen_fresh); the caller loads it and unlinks it."""
    alias = os.path.join(os.path.dirname(lib), f".load{os.getpid()}_{next(_aliases)}.so")
    if os.path.lexists(alias):
        os.unlink(alias)  # left by a killed process of the same pid (a private folder)
    fd = os.open(alias, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f, open(lib, "rb") as src:
            data = src.read()
            f.write(data)
        with open(lib + ".sha256") as f:
            recorded = f.read().split()[:1]
        if [hashlib.sha256(data).hexdigest()] != recorded:
            raise OSError(f"{os.path.basename(lib)} changed while it was loaded")
    except BaseException:
        os.unlink(alias)
        raise
    return alias


def _dlopen_fresh(lib: str) -> ctypes.CDLL:
    """dlopen a private copy of `lib` under a name never loaded before. A copy, not the
    file itself: pages of a loaded library are read from its file on demand, so a cache
    file damaged in place later (disk trouble, a stray write) would SIGBUS this process;
    a new name, because a second dlopen of a path returns the handle already loaded."""
    alias = _fresh_copy(lib)
    try:
        return ctypes.CDLL(alias)
    finally:
        os.unlink(alias)  # the mapping stays; the name is not needed any more


_aliases = itertools.count()
PROBE_TOLERANCE = 1e-3  # normalised units; the C tanh is within 4e-7 of numpy's


class _Ctx(ctypes.Structure):
    _fields_ = [
        ("batch", ctypes.c_long),
        ("params", ctypes.c_void_p),
        ("x", ctypes.c_void_p),
        ("y", ctypes.c_void_p),
        ("s", ctypes.c_void_p * 2),
        ("scratch", ctypes.c_void_p),
    ]


class CStep:
    """The compiled step for one Network; `bind` gives per-stream buffers."""

    def __init__(self, net: Network):
        self.net = net
        self.params = pack_params(net)
        self._scratch = scratch_size(net)
        source = generate_source(net)
        lib = compile_library(source)
        problem = self._load(lib, source)
        if problem is not None:
            # Deleted and built again once: a damaged cache heals on the next start
            # instead of failing (or crashing) on every one.
            lib = compile_library(source, rebuild=True)
            problem = self._load(lib, source)
        if problem is not None:
            remove_library(lib)
            raise CStepUnavailable(f"the compiled C step is unusable: {problem}")

    def _load(self, lib: str, source: str) -> Optional[str]:
        """dlopen `lib` and prove it; None when it is the right library, else why not."""
        try:
            self.lib = _dlopen_fresh(lib)
        except OSError as e:
            return f"loading it failed ({str(e)[:160]})"
        try:
            marker = (ctypes.c_char * 65).in_dll(self.lib, "edgernn_source_sha256").value
        except ValueError:
            marker = None
        if marker != _source_marker(source)[1].encode():
            return "it was built from other source (another network shape)"
        self.lib.edgernn_step.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.lib.edgernn_step.restype = ctypes.c_int
        self.lib.edgernn_run.argtypes = [
            ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        self.lib.edgernn_run.restype = ctypes.c_int
        self.lib.edgernn_run_features.argtypes = [
            ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_void_p,
        ]  # fmt: skip
        self.lib.edgernn_run_features.restype = ctypes.c_int
        return self.probe()

    def probe(self) -> Optional[str]:
        """One step from a random non-zero state, against the numpy step; None if equal."""
        net = self.net
        rng = np.random.default_rng(4321)
        batch, layers = 3, len(net.layers)
        x = (rng.standard_normal((batch, net.n_channels)) * net.std + net.mean).astype(np.float32)
        shape = (net.n_state, layers, batch, net.hidden)
        s_in = (0.5 * rng.standard_normal(shape)).astype(np.float32)
        want_s, want_y = np.empty_like(s_in), np.empty_like(x)
        fused_step(net, x, s_in, want_s, want_y)
        states = (s_in.copy(), np.full(shape, np.nan, np.float32))
        y = np.full_like(x, np.nan)
        ctx, address = self.bind(x, y, states)
        if self.lib.edgernn_step(address, 0) != 0:
            return "the probe step refused a finite input"
        error = max(
            float(np.max(np.abs((y - want_y) / net.std))),
            float(np.max(np.abs(states[1] - want_s))),
        )
        if not error <= PROBE_TOLERANCE:  # NaN (garbage) fails too
            return f"its probe step differs from the numpy step by {error:.3g}"
        return None

    @staticmethod
    def fastcall():
        """The fast-call extension module (shared by every CStep), or None."""
        return fastcall_module()

    def bind(self, x: np.ndarray, y: np.ndarray, states: tuple[np.ndarray, np.ndarray]):
        """A context over caller-owned contiguous float32 buffers; returns (ctx, address)."""
        scratch = _aligned_zeros(self._scratch)
        ctx = _Ctx(
            x.shape[0],
            self.params.ctypes.data,
            x.ctypes.data,
            y.ctypes.data,
            (ctypes.c_void_p * 2)(states[0].ctypes.data, states[1].ctypes.data),
            scratch.ctypes.data,
        )
        ctx._keep = (x, y, states, scratch, self.params)  # the buffers live as long as ctx
        return ctx, ctypes.addressof(ctx)


# ----------------------------------------------------------------------------------
# the fast call: Stream.step's way into the C step where Python's headers are installed
#
# A ctypes call costs ~0.14 µs per argument on top of ~0.13 µs for the call itself, and
# copying a sample into the bound buffer from Python another ~0.15 µs: together more
# than the whole LSTM-64 step. This small CPython extension (the same cache, checks
# and private-copy loading as the step libraries) takes the sample itself: it reads
# its buffer (C-contiguous float32 of the bound shape, else it declines), copies it
# into the stream's input buffer and calls the step, in one METH_FASTCALL call. Built
# once per machine and Python (shape-independent). No Python.h, no compiler or a
# failed build: Stream.step keeps its ctypes call.

_FASTCALL_SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef int (*edgernn_step_fn)(void *ctx, int cur);

typedef struct {
    edgernn_step_fn fn;
    void *ctx;
    void *x;
    Py_ssize_t nbytes;
    int ndim;
    Py_ssize_t shape[8];
} edgernn_bound;

static const char BOUND[] = "edgernn.fastcall.bound";

static void bound_free(PyObject *capsule) {
    PyMem_Free(PyCapsule_GetPointer(capsule, BOUND));
}

/* bind(step address, context address, input buffer address, sample shape) -> capsule */
static PyObject *fc_bind(PyObject *self, PyObject *args) {
    unsigned long long fn, ctx, x;
    PyObject *shape;
    if (!PyArg_ParseTuple(args, "KKKO!", &fn, &ctx, &x, &PyTuple_Type, &shape))
        return NULL;
    Py_ssize_t nd = PyTuple_GET_SIZE(shape);
    if (nd < 1 || nd > 8 || !fn || !ctx || !x) {
        PyErr_SetString(PyExc_ValueError, "bad binding");
        return NULL;
    }
    edgernn_bound *b = PyMem_Malloc(sizeof *b);
    if (!b)
        return PyErr_NoMemory();
    b->fn = (edgernn_step_fn)(uintptr_t)fn;
    b->ctx = (void *)(uintptr_t)ctx;
    b->x = (void *)(uintptr_t)x;
    b->ndim = (int)nd;
    Py_ssize_t n = 4;
    for (Py_ssize_t i = 0; i < nd; i++) {
        Py_ssize_t d = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, i));
        if (d < 0) {
            PyMem_Free(b);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "negative dimension");
            return NULL;
        }
        b->shape[i] = d;
        n *= d;
    }
    b->nbytes = n;
    PyObject *capsule = PyCapsule_New(b, BOUND, bound_free);
    if (!capsule)
        PyMem_Free(b);
    return capsule;
}

/* step(bound, sample, cur) -> 0 stepped, 1 refused (NaN/inf: state untouched),
   -1 declined (not a C-contiguous float32 buffer of the bound shape; nothing done) */
static PyObject *fc_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "step(bound, sample, cur)");
        return NULL;
    }
    edgernn_bound *b = PyCapsule_GetPointer(args[0], BOUND);
    if (!b)
        return NULL;
    long cur = PyLong_AsLong(args[2]);
    if (cur != 0 && cur != 1) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "cur must be 0 or 1");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyErr_Clear();
        return PyLong_FromLong(-1);
    }
    int ok = view.len == b->nbytes && view.itemsize == 4 && view.format != NULL
             && view.format[0] == 'f' && view.format[1] == 0 && view.ndim == b->ndim;
    for (int i = 0; ok && i < b->ndim; i++)
        ok = view.shape[i] == b->shape[i];
    if (ok)
        memcpy(b->x, view.buf, (size_t)b->nbytes);
    PyBuffer_Release(&view);
    if (!ok)
        return PyLong_FromLong(-1);
    return PyLong_FromLong(b->fn(b->ctx, (int)cur) != 0);
}

/* f32_decimals(src, dst): for each float32 of src, float(str(np.float32(v))) into the
   float64 dst (the shortest decimal that reads back as v, as the float64 nearest it):
   output.float32_decimals' method, scalar. NaN where it is not sure (powers of two,
   subnormals, huge or tiny values, near ties) or v is not finite: the caller formats
   those itself. Returns how many NaN it wrote, or -1 when the buffers do not fit. */
static double F_MUL[256], F_DIV[256], F_HALF[256];
static char F_USABLE[256];
static const double P10[23] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static void f32_tables(void) {
    for (int e = 0; e < 256; e++) {
        long k0 = (long)floor((e - 127) * 0.30102999566398120) - 8;
        int usable = k0 >= -22 && k0 <= 12 && e > 0 && e < 255;
        if (!usable)
            k0 = 0;
        F_MUL[e] = k0 < 0 ? P10[-k0] : 1.0;
        F_DIV[e] = k0 < 0 ? 1.0 : P10[k0];
        F_HALF[e] = ldexp(1.0, e - 151) * F_MUL[e] / F_DIV[e];
        F_USABLE[e] = (char)usable;
    }
}

static double f32_decimal(float v) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    unsigned e = (bits >> 23) & 0xFF;
    if (v == 0.0f)
        return (double)v; /* -0.0 stays */
    if (!F_USABLE[e] || (bits & 0x7FFFFF) == 0)
        return NAN;
    double s = fabs((double)v) * F_MUL[e] / F_DIV[e], half = F_HALF[e], digits = 0.0;
    int found = 0;
    for (int j = 0; j < 11; j++) {
        double p = P10[j], scaled = s / p, point = rint(scaled) * p, dist = fabs(point - s);
        if (fabs(dist - half) < 1e-5 * half)
            return NAN;
        if (!(dist < half))
            break;
        digits = point;
        found = 1;
        if (fabs(scaled - floor(scaled) - 0.5) < 1e-5)
            return NAN;
    }
    if (!found)
        return NAN;
    return copysign(digits * F_DIV[e] / F_MUL[e], (double)v);
}

static PyObject *fc_f32_decimals(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "f32_decimals(src, dst)");
        return NULL;
    }
    Py_buffer src, dst;
    if (PyObject_GetBuffer(args[0], &src, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyErr_Clear();
        return PyLong_FromLong(-1);
    }
    if (PyObject_GetBuffer(args[1], &dst, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE)
        != 0) {
        PyErr_Clear();
        PyBuffer_Release(&src);
        return PyLong_FromLong(-1);
    }
    long bad = -1;
    if (src.itemsize == 4 && dst.itemsize == 8 && src.format && dst.format
        && strcmp(src.format, "f") == 0 && strcmp(dst.format, "d") == 0
        && src.len / 4 == dst.len / 8) {
        const float *in = src.buf;
        double *out = dst.buf;
        bad = 0;
        for (Py_ssize_t i = 0; i < src.len / 4; i++) {
            out[i] = isfinite(in[i]) ? f32_decimal(in[i]) : NAN;
            bad += isnan(out[i]) ? 1 : 0;
        }
    }
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    return PyLong_FromLong(bad);
}

/* Python's repr of the float64 f32_decimal gives (the same digits: a decimal of at most
   10 significant digits is the shortest that reads back as the float64 nearest it),
   written from those digits. Returns the length, 0 when not sure (see above). */
static int f32_token(float v, char *out) {
    if (!isfinite(v))
        return 0;
    char *p = out;
    if (signbit(v))
        *p++ = '-';
    if (v == 0.0f) {
        memcpy(p, "0.0", 3);
        return (int)(p - out) + 3;
    }
    double d = f32_decimal(v);
    if (isnan(d))
        return 0;
    uint32_t bits;
    memcpy(&bits, &v, 4);
    unsigned e = (bits >> 23) & 0xFF;
    /* d = digits * 10**k0 with digits an integer < 1e11 (exact in a double) */
    long k0 = (long)floor(((int)e - 127) * 0.30102999566398120) - 8;
    double digits = rint(fabs(d) * F_MUL[e] / F_DIV[e]);
    if (!(digits >= 1.0 && digits < 1e11))
        return 0;
    unsigned long long n = (unsigned long long)digits;
    char raw[24];
    int len = 0;
    while (n) {
        raw[len++] = (char)('0' + n % 10);
        n /= 10;
    }
    int decpt = len + (int)k0; /* value = 0.d1d2... * 10**decpt */
    int start = 0;              /* raw is reversed: strip trailing zeros from its front */
    while (start < len - 1 && raw[start] == '0')
        start++;
    char dig[24];
    int nd = 0;
    for (int i = len - 1; i >= start; i--)
        dig[nd++] = raw[i];
    if (decpt <= -4 || decpt > 16) {
        *p++ = dig[0];
        if (nd > 1) {
            *p++ = '.';
            memcpy(p, dig + 1, (size_t)(nd - 1));
            p += nd - 1;
        }
        int x = decpt - 1;
        *p++ = 'e';
        *p++ = x < 0 ? '-' : '+';
        if (x < 0)
            x = -x;
        if (x >= 100)
            *p++ = (char)('0' + x / 100);
        *p++ = (char)('0' + (x / 10) % 10);
        *p++ = (char)('0' + x % 10);
    } else if (decpt <= 0) {
        *p++ = '0';
        *p++ = '.';
        for (int i = 0; i < -decpt; i++)
            *p++ = '0';
        memcpy(p, dig, (size_t)nd);
        p += nd;
    } else if (decpt < nd) {
        memcpy(p, dig, (size_t)decpt);
        p += decpt;
        *p++ = '.';
        memcpy(p, dig + decpt, (size_t)(nd - decpt));
        p += nd - decpt;
    } else {
        memcpy(p, dig, (size_t)nd);
        p += nd;
        for (int i = nd; i < decpt; i++)
            *p++ = '0';
        *p++ = '.';
        *p++ = '0';
    }
    return (int)(p - out);
}

/* f32_tokens(src) -> the tokens of every float32 of src (C-contiguous), comma-joined,
   as RecordWriter writes them; None when one of them is not sure or not finite (the
   caller then formats them itself) or src is not a float32 buffer. */
static PyObject *fc_f32_tokens(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "f32_tokens(src)");
        return NULL;
    }
    Py_buffer src;
    if (PyObject_GetBuffer(args[0], &src, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *result = NULL;
    Py_ssize_t n = src.len / 4;
    if (src.itemsize == 4 && src.format && strcmp(src.format, "f") == 0 && n <= 4096) {
        char stack[2048], *buf = n <= 64 ? stack : PyMem_Malloc((size_t)n * 32);
        if (!buf) {
            PyBuffer_Release(&src);
            return PyErr_NoMemory();
        }
        const float *in = src.buf;
        Py_ssize_t at = 0;
        int ok = 1;
        for (Py_ssize_t i = 0; ok && i < n; i++) {
            if (i)
                buf[at++] = ',';
            int w = f32_token(in[i], buf + at);
            ok = w > 0;
            at += w;
        }
        if (ok)
            result = PyUnicode_FromStringAndSize(buf, at);
        if (buf != stack)
            PyMem_Free(buf);
    }
    PyBuffer_Release(&src);
    if (result == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return result;
}

/* -- the live run's steady state (firmware_bridge/live.py FastFrames) ---------------
   live_bind(step address, context address, x address, y address, h0 address, h1
   address, hidden, keys, fallback) -> capsule or None. h0, h1: the head's features
   (the last layer's h) in state buffer 0 and 1 (0, 0, 0: not wanted); keys: the
   channels' '"name":' JSON tokens (model order); fallback: json_float, called for the
   rare float whose token f32_token is not sure of.

   live_frames(live, data, cur, next_seq, period_us, out, whole) -> (consumed, frames, n,
   cur, text). Takes complete binary data frames from the start of `data` (protocol.py:
   COBS, CRC-16/CCITT-FALSE, version 1, type data, the model's channel count, seq ==
   next_seq, every value finite) for as long as they come and out has room, and steps
   the stream on each sample. whole: text is every sample's JSON line (RecordLines'
   bytes: seq, time_us, the values, "forecast"); else a list of each line's start, up to
   '"forecast":{' (the caller adds the rest: live_pairs of the forecast, the detector's
   fields). It stops, consuming nothing more, at the first byte it does not take that
   way: a partial frame, a gap, a hello, a bad frame, a NaN; the caller hands the rest
   to the Python decoder, which counts and handles it as before. out: float32 (rows,
   2 C + hidden), each sample's values, forecast and features.

   live_pairs(live, values) -> the '"name":token' pairs of C float32 values, joined. */
#define LIVE_MAX_ENCODED (4096 + 4096 / 254 + 2)

typedef struct {
    edgernn_step_fn fn;
    void *ctx;
    float *x;
    const float *y;
    const float *h[2];
    int hidden;
    int channels;
    char *keys;           /* the keys' tokens, back to back */
    int key_at[257];      /* where key i starts in keys; key_at[channels]: the end */
    PyObject *fallback;
    char *text;           /* the lines being made (kept between calls) */
    char *pairs;          /* live_pairs' own (live_loop's score calls it mid-line) */
    double fb_in;         /* live_fields' last value json_float formatted (a threshold */
    char fb_out[48];      /* of 4.0 comes every sample; the C token is not sure of powers */
    int fb_len;           /* of two), and its token; fb_len 0: none yet */
    Py_ssize_t cap;
} edgernn_live;

static const char LIVE[] = "edgernn.fastcall.live";
static uint16_t CRC_TABLE[256];

static void crc_table(void) {
    for (int i = 0; i < 256; i++) {
        uint16_t c = (uint16_t)(i << 8);
        for (int k = 0; k < 8; k++)
            c = (uint16_t)(c & 0x8000 ? (c << 1) ^ 0x1021 : c << 1);
        CRC_TABLE[i] = c;
    }
}

static uint16_t crc16_ccitt(const unsigned char *p, Py_ssize_t n) {
    uint16_t c = 0xFFFF;
    for (Py_ssize_t i = 0; i < n; i++)
        c = (uint16_t)((c << 8) ^ CRC_TABLE[((c >> 8) ^ p[i]) & 0xFF]);
    return c;
}

/* protocol.cobs_decode; -1 where it raises */
static Py_ssize_t cobs_decode_c(const unsigned char *in, Py_ssize_t n, unsigned char *out) {
    Py_ssize_t i = 0, o = 0;
    while (i < n) {
        unsigned code = in[i];
        if (code == 0 || i + (Py_ssize_t)code > n)
            return -1;
        memcpy(out + o, in + i + 1, code - 1);
        o += code - 1;
        i += code;
        if (code != 0xFF && i < n)
            out[o++] = 0;
    }
    return o;
}

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void live_free(PyObject *capsule) {
    edgernn_live *L = PyCapsule_GetPointer(capsule, LIVE);
    if (!L)
        return;
    Py_XDECREF(L->fallback);
    PyMem_Free(L->keys);
    PyMem_Free(L->text);
    PyMem_Free(L->pairs);
    PyMem_Free(L);
}

static PyObject *fc_live_bind(PyObject *self, PyObject *args) {
    unsigned long long fn, ctx, x, y, h0, h1;
    int hidden;
    PyObject *keys, *fallback;
    if (!PyArg_ParseTuple(args, "KKKKKKiO!O", &fn, &ctx, &x, &y, &h0, &h1, &hidden,
                          &PyTuple_Type, &keys, &fallback))
        return NULL;
#if PY_BIG_ENDIAN
    Py_RETURN_NONE; /* frames are little-endian floats, read in place */
#endif
    Py_ssize_t c = PyTuple_GET_SIZE(keys);
    if (c < 1 || c > 255 || !fn || !ctx || !x || !y || !PyCallable_Check(fallback) || hidden < 0
        || (hidden && (!h0 || !h1)))
        Py_RETURN_NONE;
    edgernn_live *L = PyMem_Calloc(1, sizeof *L);
    if (!L)
        return PyErr_NoMemory();
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < c; i++) {
        Py_ssize_t len;
        if (!PyUnicode_Check(PyTuple_GET_ITEM(keys, i))
            || !PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(keys, i), &len)) {
            PyMem_Free(L);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "keys are str");
            return NULL;
        }
        total += len;
    }
    L->keys = PyMem_Malloc((size_t)total + 1);
    if (!L->keys) {
        PyMem_Free(L);
        return PyErr_NoMemory();
    }
    Py_ssize_t at = 0;
    for (Py_ssize_t i = 0; i < c; i++) {
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(keys, i), &len);
        L->key_at[i] = (int)at;
        memcpy(L->keys + at, s, (size_t)len);
        at += len;
    }
    L->key_at[c] = (int)at;
    L->pairs = PyMem_Malloc((size_t)(at + 34 * c + 16));
    if (!L->pairs) {
        PyMem_Free(L->keys);
        PyMem_Free(L);
        return PyErr_NoMemory();
    }
    L->fn = (edgernn_step_fn)(uintptr_t)fn;
    L->ctx = (void *)(uintptr_t)ctx;
    L->x = (float *)(uintptr_t)x;
    L->y = (const float *)(uintptr_t)y;
    L->h[0] = (const float *)(uintptr_t)h0;
    L->h[1] = (const float *)(uintptr_t)h1;
    L->hidden = hidden;
    L->channels = (int)c;
    Py_INCREF(fallback);
    L->fallback = fallback;
    PyObject *capsule = PyCapsule_New(L, LIVE, live_free);
    if (!capsule) {
        Py_DECREF(fallback);
        PyMem_Free(L->keys);
        PyMem_Free(L->pairs);
        PyMem_Free(L);
    }
    return capsule;
}

static int live_reserve(edgernn_live *L, Py_ssize_t need) {
    if (need <= L->cap)
        return 0;
    Py_ssize_t cap = L->cap ? L->cap : 4096;
    while (cap < need)
        cap *= 2;
    char *t = PyMem_Realloc(L->text, (size_t)cap);
    if (!t) {
        PyErr_NoMemory();
        return -1;
    }
    L->text = t;
    L->cap = cap;
    return 0;
}

static char *put_u32(char *p, uint32_t v) {
    char raw[10];
    int n = 0;
    do {
        raw[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = raw[--n];
    return p;
}

/* the channels' "key":token pairs, comma-separated; NULL on a Python error */
static char *put_floats(edgernn_live *L, char *p, const float *v) {
    for (int i = 0; i < L->channels; i++) {
        if (i)
            *p++ = ',';
        int k = L->key_at[i], kn = L->key_at[i + 1] - k;
        memcpy(p, L->keys + k, (size_t)kn);
        p += kn;
        int w = f32_token(v[i], p);
        if (w <= 0) { /* not sure: RecordWriter's own formula (json_float) */
            PyObject *f = PyFloat_FromDouble((double)v[i]);
            PyObject *s = f ? PyObject_CallOneArg(L->fallback, f) : NULL;
            Py_XDECREF(f);
            Py_ssize_t len;
            const char *u = s && PyUnicode_Check(s) ? PyUnicode_AsUTF8AndSize(s, &len) : NULL;
            if (!u || len > 32) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "json_float gave no short str");
                Py_XDECREF(s);
                return NULL;
            }
            memcpy(p, u, (size_t)len);
            w = (int)len;
            Py_DECREF(s);
        }
        p += w;
    }
    return p;
}

typedef struct {
    int cur;           /* the stream's state buffer */
    uint32_t next_seq; /* the seq the next frame must carry */
    Py_ssize_t n, frames, at; /* samples and frames taken, text made (whole lines) */
    Py_ssize_t pos;           /* bytes of the frames taken */
} live_pass;

/* The frames live_frames takes from d[0:len] (see above): steps, rows from rowp (room for
   `rows`), lines into L->text from p->at (starts == NULL) or their starts into the list
   `starts`. Returns the bytes consumed; -1 on a Python error (p says what was done). */
static int live_finish(edgernn_live *L, PyObject *score, live_pass *p, char *q, uint32_t seq,
                       uint32_t t);

static int scorer_sample(edgernn_live *L, PyObject *score, live_pass *p, char *q,
                         const float *x, const float *f, uint32_t seq, uint32_t t);

static Py_ssize_t live_take(edgernn_live *L, const unsigned char *d, Py_ssize_t len,
                            double period, float *rowp, Py_ssize_t rows, PyObject *starts,
                            PyObject *score, live_pass *p) {
    const int C = L->channels, H = L->hidden;
    const Py_ssize_t stride = 2 * (Py_ssize_t)C + H;
    /* one line at most: braces, seq, time_us, "forecast", and per channel two keys and
       two tokens of at most 32 bytes */
    const Py_ssize_t line_max = 96 + 2 * ((Py_ssize_t)L->key_at[C] + (Py_ssize_t)C * 34);
    unsigned char raw[LIVE_MAX_ENCODED];
    Py_ssize_t pos = 0;
    while (pos < len) {
        const unsigned char *z = memchr(d + pos, 0, (size_t)(len - pos));
        if (!z)
            break; /* a partial frame: the decoder keeps it */
        Py_ssize_t clen = z - (d + pos);
        if (clen == 0) { /* back-to-back delimiters: an idle line (the decoder skips it) */
            p->pos = pos += 1;
            continue;
        }
        if (clen > LIVE_MAX_ENCODED)
            break;
        Py_ssize_t rlen = cobs_decode_c(d + pos, clen, raw);
        if (rlen < 14)
            break;
        if (crc16_ccitt(raw, rlen - 2) != (uint16_t)(raw[rlen - 2] | raw[rlen - 1] << 8))
            break;
        int c = raw[2], s = raw[3];
        if (raw[0] != 1 || raw[1] != 1 || c != C || s < 1 || rlen - 2 != 12 + 4 * c * s)
            break;
        uint32_t seq = le32(raw + 4), time_us = le32(raw + 8);
        if (seq != p->next_seq || p->n + s > rows || (s > 1 && !(period * (s - 1) < 4e15)))
            break;
        const unsigned char *vals = raw + 12;
        int finite = 1;
        for (int i = 0; finite && i < c * s; i++) {
            float v;
            memcpy(&v, vals + 4 * i, 4);
            finite = isfinite(v);
        }
        if (!finite)
            break; /* invalid samples: the Python path counts them and makes the gap */
        for (int k = 0; k < s; k++) {
            if (live_reserve(L, p->at + line_max) < 0)
                return -1;
            float *xr = rowp + p->n * stride, *fr = xr + C;
            memcpy(xr, vals + (Py_ssize_t)4 * C * k, (size_t)4 * C);
            memcpy(L->x, xr, (size_t)4 * C);
            if (L->fn(L->ctx, p->cur) != 0) {
                PyErr_SetString(PyExc_RuntimeError, "the C step refused a finite sample");
                return -1;
            }
            p->cur ^= 1;
            p->n++;
            memcpy(fr, L->y, (size_t)4 * C);
            if (H)
                memcpy(fr + C, L->h[p->cur], (size_t)4 * H);
            uint32_t t = k ? (uint32_t)((uint64_t)time_us + (uint64_t)(int64_t)rint(k * period))
                           : time_us;
            char *q = L->text + p->at;
            memcpy(q, "{\"seq\":", 7);
            q = put_u32(q + 7, (uint32_t)(seq + (uint32_t)k));
            memcpy(q, ",\"time_us\":", 11);
            q = put_u32(q + 11, t);
            *q++ = ',';
            if (!(q = put_floats(L, q, xr)))
                return -1;
            memcpy(q, ",\"forecast\":{", 13);
            q += 13;
            if (starts) { /* the line's start, for the caller to finish */
                PyObject *start = PyUnicode_DecodeASCII(L->text + p->at, q - (L->text + p->at), NULL);
                if (!start || PyList_Append(starts, start) < 0) {
                    Py_XDECREF(start);
                    return -1;
                }
                Py_DECREF(start);
                continue;
            }
            if (score) { /* the scorer, or the caller's Python, finishes the line */
                if (scorer_sample(L, score, p, q, xr, fr, seq + (uint32_t)k, t) < 0)
                    return -1;
                continue;
            }
            if (!(q = put_floats(L, q, fr)))
                return -1;
            memcpy(q, "}}\n", 3);
            p->at = q + 3 - L->text;
        }
        p->next_seq = seq + (uint32_t)s;
        p->frames++;
        p->pos = pos = z - d + 1;
    }
    return pos;
}

/* score(k, seq, time_us) for the sample just taken (row k): the rest of its line after
   '"forecast":{' (without "}\n"), or a 1-tuple holding its whole line instead */
static int live_finish(edgernn_live *L, PyObject *score, live_pass *p, char *q, uint32_t seq,
                       uint32_t t) {
    PyObject *r = PyObject_CallFunction(score, "nkk", p->n - 1, (unsigned long)seq,
                                        (unsigned long)t);
    if (!r)
        return -1;
    Py_ssize_t start = q - L->text, len;
    PyObject *s = r;
    if (PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 1) {
        s = PyTuple_GET_ITEM(r, 0);
        start = p->at; /* the whole line, in place of the start made here */
    }
    const char *u = PyUnicode_Check(s) ? PyUnicode_AsUTF8AndSize(s, &len) : NULL;
    if (!u) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "score gave no str");
        Py_DECREF(r);
        return -1;
    }
    if (live_reserve(L, start + len + 3) < 0) {
        Py_DECREF(r);
        return -1;
    }
    memcpy(L->text + start, u, (size_t)len);
    Py_ssize_t end = start + len;
    if (start != p->at) {
        memcpy(L->text + end, "}\n", 2);
        end += 2;
    }
    p->at = end;
    Py_DECREF(r);
    return 0;
}

static int live_args(PyObject *const *args, edgernn_live **L, live_pass *p, double *period) {
    *L = PyCapsule_GetPointer(args[0], LIVE);
    if (!*L)
        return -1;
    p->cur = (int)PyLong_AsLong(args[1]);
    p->next_seq = (uint32_t)PyLong_AsUnsignedLongMask(args[2]);
    *period = PyFloat_AsDouble(args[3]);
    if (PyErr_Occurred())
        return -1;
    if (p->cur != 0 && p->cur != 1) {
        PyErr_SetString(PyExc_ValueError, "cur must be 0 or 1");
        return -1;
    }
    p->n = p->frames = p->at = p->pos = 0;
    return 0;
}

static int float_buffer(PyObject *obj, Py_buffer *view) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) != 0)
        return -1;
    if (view->itemsize != 4 || !view->format || strcmp(view->format, "f") != 0) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_TypeError, "a float32 buffer is needed");
        return -1;
    }
    return 0;
}

static PyObject *fc_live_frames(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "live_frames(live, data, cur, next_seq, period_us, out, whole)");
        return NULL;
    }
    edgernn_live *L;
    live_pass p;
    double period;
    PyObject *const fargs[4] = {args[0], args[2], args[3], args[4]};
    int whole = PyObject_IsTrue(args[6]);
    if (whole < 0 || live_args(fargs, &L, &p, &period) < 0)
        return NULL;
    Py_buffer data, out;
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) != 0)
        return NULL;
    if (float_buffer(args[5], &out) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    PyObject *result = NULL, *starts = whole ? NULL : PyList_New(0);
    if (whole || starts) {
        Py_ssize_t rows = out.len / (4 * (2 * (Py_ssize_t)L->channels + L->hidden));
        Py_ssize_t pos = live_take(L, data.buf, data.len, period, out.buf, rows, starts, NULL, &p);
        PyObject *text = pos < 0 ? NULL : whole ? PyUnicode_DecodeASCII(L->text, p.at, NULL) : starts;
        if (text) {
            result = Py_BuildValue("(nnniN)", pos, p.frames, p.n, p.cur, text);
            starts = NULL; /* stolen (or, on failure, released by Py_BuildValue) */
        }
    }
    Py_XDECREF(starts);
    PyBuffer_Release(&out);
    PyBuffer_Release(&data);
    return result;
}

/* live_loop(live, cur, next_seq, period_us, fd, out_fd, until, read_size, max_bytes, rows,
   pending, taken, edges, counts, window) -> (status, consumed, frames, n, cur, errno, rest,
   t_read).
   The forecasts-only steady state without Python: poll the port `fd`, read, take the
   frames (live_take, whole lines), write the lines to out_fd, count each sample's
   latency (read to written, CLOCK_MONOTONIC: perf_counter) in both histograms (counts,
   window: int64, bins of `edges` as LatencyHistogram.add_repeated bins them), over and
   over, until something needs Python (a read of more than max_bytes goes to Python whole);
   status says what (the counts cover every sample taken until then):
     0 `until` (a CLOCK_MONOTONIC time) has passed, or poll was interrupted (a signal);
     1 a read that live_take did not take to its end: rest (bytes) for the decoder,
       read at t_read;
     2 the read failed (errno; 0: nothing read, a vanished device);
     3 writing the lines failed (errno), after the samples were taken;
     4 the port reports a hang-up or an error: read_inline reads it and handles it.
   rows (float32 (R, 2 C)): each sample's values and forecast, of the last read;
   pending (float32 (P, C)): the forecasts of every sample taken, the sample k of the
   call at row (taken[0] + k) % P; taken: int64 [samples before the call], updated.
   score: None (forecasts only), or live_take's score(k, seq, time_us) that finishes each
   sample's line (the detector, the online head: rows then (R, 2 C + hidden), pending
   unused), or a scorer (scorer_new); when it raises, status 5 and rest is the exception
   (the lines made before it are written, the samples taken counted); status 6: the
   scorer's idle() raised (rest), every line written. */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void bin_latency(const double *edges, Py_ssize_t ne, int64_t *a, int64_t *b,
                        double v, Py_ssize_t n) {
    Py_ssize_t lo = 0, hi = ne; /* bisect_left: the first edge >= v */
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (edges[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    a[lo] += n;
    b[lo] += n;
}

static int scorer_idle(PyObject *score);

/* The exception raised (with its traceback), taken out of the error indicator */
static PyObject *take_exception(void) {
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyErr_NormalizeException(&et, &ev, &etb);
    if (etb && ev)
        PyException_SetTraceback(ev, etb);
    Py_XDECREF(et);
    Py_XDECREF(etb);
    if (!ev)
        PyErr_SetString(PyExc_SystemError, "live_loop: an error without an exception");
    return ev;
}

static PyObject *fc_live_loop(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 16) {
        PyErr_SetString(PyExc_TypeError, "live_loop takes 16 arguments");
        return NULL;
    }
    PyObject *score = args[15] == Py_None ? NULL : args[15];
    edgernn_live *L;
    live_pass p;
    double period;
    if (live_args(args, &L, &p, &period) < 0)
        return NULL;
    int fd = (int)PyLong_AsLong(args[4]), out_fd = (int)PyLong_AsLong(args[5]);
    double until = PyFloat_AsDouble(args[6]);
    Py_ssize_t read_size = PyLong_AsSsize_t(args[7]), max_bytes = PyLong_AsSsize_t(args[8]);
    if (PyErr_Occurred())
        return NULL;
    if (read_size < 1) {
        PyErr_SetString(PyExc_ValueError, "read_size must be positive");
        return NULL;
    }
    Py_buffer rows, pend, taken, edges, counts, window;
    int got = 0;
    if (float_buffer(args[9], &rows) == 0 && ++got && float_buffer(args[10], &pend) == 0 && ++got
        && PyObject_GetBuffer(args[11], &taken, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) == 0 && ++got
        && PyObject_GetBuffer(args[12], &edges, PyBUF_C_CONTIGUOUS) == 0 && ++got
        && PyObject_GetBuffer(args[13], &counts, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) == 0 && ++got
        && PyObject_GetBuffer(args[14], &window, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) == 0)
        got++;
    PyObject *result = NULL, *rest = NULL;
    const int C = L->channels;
    const Py_ssize_t stride = 2 * (Py_ssize_t)C + L->hidden;
    const Py_ssize_t ne = edges.len / 8, R = rows.len / (4 * stride), P = pend.len / (4 * C);
    if (got < 6)
        goto release;
    if ((L->hidden && !score) || taken.len != 8 || counts.len != 8 * (ne + 1) || window.len != counts.len
        || R < 1 || P < 1 || ne < 1) {
        PyErr_SetString(PyExc_ValueError, "live_loop: buffers of the wrong size");
        goto release;
    }
    int64_t *before = taken.buf;
    int status = 0, err = 0;
    double t_read = 0.0;
    Py_ssize_t consumed = 0;
    unsigned char *buf = PyMem_Malloc((size_t)read_size);
    if (!buf) {
        PyErr_NoMemory();
        goto release;
    }
    for (;;) {
        double now = mono_now();
        if (now >= until)
            break;
        struct pollfd pfd = {fd, POLLIN | POLLPRI, 0};
        int ready;
        Py_BEGIN_ALLOW_THREADS /* the state saver's thread runs meanwhile */
        ready = poll(&pfd, 1, (int)ceil((until - now) * 1000.0));
        Py_END_ALLOW_THREADS
        if (ready < 0 && errno != EINTR) {
            status = 4; /* poll itself fails: read_inline's poll says why */
            break;
        }
        if (ready <= 0)
            break; /* the time is up, or a signal: Python looks (runs its handler) */
        if (!(pfd.revents & (POLLIN | POLLPRI)) || (pfd.revents & (POLLERR | POLLNVAL | POLLHUP))) {
            status = 4; /* trouble on the port: Python reads it */
            break;
        }
        Py_ssize_t r;
        Py_BEGIN_ALLOW_THREADS
        r = read(fd, buf, (size_t)read_size);
        Py_END_ALLOW_THREADS
        t_read = mono_now();
        if (r <= 0) {
            err = r < 0 ? errno : 0;
            if (r < 0 && err == EINTR)
                break; /* a signal: Python runs its handler */
            if (r < 0 && (err == EAGAIN || err == EWOULDBLOCK))
                continue;
            status = 2;
            break;
        }
        live_pass q = {p.cur, p.next_seq, 0, 0, 0, 0};
        Py_ssize_t pos = r > max_bytes ? 0 : live_take(L, buf, r, period, rows.buf, R, NULL, score, &q);
        if (pos < 0) { /* a Python error (score raised): what was done is still counted */
            if (!(rest = take_exception()))
                goto release_buf;
            pos = q.pos;
            status = 5;
        }
        float *rowp = rows.buf, *pendp = pend.buf;
        for (Py_ssize_t k = q.n > P ? q.n - P : 0; !score && k < q.n; k++)
            memcpy(pendp + ((before[0] + p.n + k) % P) * C, rowp + k * stride + C, (size_t)4 * C);
        consumed += pos;
        p.cur = q.cur;
        p.next_seq = q.next_seq;
        p.n += q.n;
        p.frames += q.frames;
        Py_ssize_t done = 0;
        while (done < q.at) {
            Py_ssize_t w;
            Py_BEGIN_ALLOW_THREADS
            w = write(out_fd, L->text + done, (size_t)(q.at - done));
            Py_END_ALLOW_THREADS
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                err = w < 0 ? errno : EIO;
                break;
            }
            done += w;
        }
        Py_ssize_t lines = q.n - (status == 5); /* the sample that failed has no line */
        if (lines > 0)
            bin_latency(edges.buf, ne, counts.buf, window.buf, mono_now() - t_read, lines);
        if (status == 5)
            break; /* (a write error too is then the lesser news) */
        if (err) {
            status = 3;
            break;
        }
        if (pos == r && scorer_idle(score) < 0) { /* (the read taken, its lines written) */
            if (!(rest = take_exception()))
                goto release_buf;
            status = 6;
            break;
        }
        if (pos < r) {
            rest = PyBytes_FromStringAndSize((const char *)buf + pos, r - pos);
            if (!rest)
                goto release_buf;
            status = 1;
            break;
        }
    }
    before[0] += p.n;
    result = Py_BuildValue("(innniiOd)", status, consumed, p.frames, p.n, p.cur, err,
                           rest ? rest : Py_None, t_read);
release_buf:
    Py_XDECREF(rest);
    PyMem_Free(buf);
release:
    if (got > 5) PyBuffer_Release(&window);
    if (got > 4) PyBuffer_Release(&counts);
    if (got > 3) PyBuffer_Release(&edges);
    if (got > 2) PyBuffer_Release(&taken);
    if (got > 1) PyBuffer_Release(&pend);
    if (got > 0) PyBuffer_Release(&rows);
    return result;
}

static PyObject *fc_live_pairs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "live_pairs(live, values)");
        return NULL;
    }
    edgernn_live *L = PyCapsule_GetPointer(args[0], LIVE);
    if (!L)
        return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(args[1], &v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0)
        return NULL;
    PyObject *result = NULL;
    if (v.itemsize != 4 || !v.format || strcmp(v.format, "f") != 0 || v.len != 4 * L->channels)
        PyErr_SetString(PyExc_TypeError, "live_pairs takes the channels' float32 values");
    else {
        char *p = put_floats(L, L->pairs, v.buf);
        if (p)
            result = PyUnicode_DecodeASCII(L->pairs, p - L->pairs, NULL);
    }
    PyBuffer_Release(&v);
    return result;
}

/* A record field's float d (value: d as a Python float, or NULL) as json_fields writes
   it, into out (room for 48): its length; 0 where json_float's text is too long; -1 on
   a Python error. The last value json_float formatted is remembered (a threshold of 4.0
   comes every sample, and the C token is not sure of powers of two). */
static int put_field_float(edgernn_live *L, char *out, double d, PyObject *value) {
    int w = f32_token((float)d, out);
    if (w <= 0 && L->fb_len && memcmp(&d, &L->fb_in, sizeof d) == 0) {
        memcpy(out, L->fb_out, (size_t)L->fb_len);
        w = L->fb_len;
    }
    if (w > 0)
        return w;
    /* not sure (a power of two, say), not finite: json_float's */
    PyObject *own = value ? NULL : PyFloat_FromDouble(d);
    PyObject *t = value || own ? PyObject_CallOneArg(L->fallback, value ? value : own) : NULL;
    Py_XDECREF(own);
    Py_ssize_t len;
    const char *u = t && PyUnicode_Check(t) ? PyUnicode_AsUTF8AndSize(t, &len) : NULL;
    if (!u || len > 40) {
        Py_XDECREF(t);
        return PyErr_Occurred() ? -1 : 0;
    }
    memcpy(out, u, (size_t)len);
    Py_DECREF(t);
    memcpy(L->fb_out, out, (size_t)len);
    L->fb_in = d;
    L->fb_len = (int)len;
    return (int)len;
}

/* live_fields(live, fields) -> ',"key":value' for each item of the dict, as
   jsonline.json_fields writes them, where every key is plain ASCII (nothing to escape)
   and every value an exact float, int or None; else None (json_fields' turn). */
static PyObject *fc_live_fields(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "live_fields(live, dict)");
        return NULL;
    }
    edgernn_live *L = PyCapsule_GetPointer(args[0], LIVE);
    if (!L)
        return NULL;
    char buf[1024];
    Py_ssize_t at = 0, pos = 0, klen;
    PyObject *key, *value;
    while (PyDict_Next(args[1], &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key) || !PyUnicode_IS_ASCII(key))
            Py_RETURN_NONE;
        const char *k = PyUnicode_AsUTF8AndSize(key, &klen);
        if (!k || at + klen + 48 > (Py_ssize_t)sizeof buf)
            Py_RETURN_NONE;
        for (Py_ssize_t i = 0; i < klen; i++)
            if (k[i] < 0x20 || k[i] == '"' || k[i] == '\\' || k[i] == 0x7f)
                Py_RETURN_NONE;
        buf[at++] = ',';
        buf[at++] = '"';
        memcpy(buf + at, k, (size_t)klen);
        at += klen;
        buf[at++] = '"';
        buf[at++] = ':';
        if (value == Py_None) {
            memcpy(buf + at, "null", 4);
            at += 4;
        } else if (PyLong_CheckExact(value)) {
            int overflow;
            long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
            if (overflow || (v == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                Py_RETURN_NONE;
            }
            at += snprintf(buf + at, 24, "%lld", v);
        } else if (PyFloat_CheckExact(value)) {
            int w = put_field_float(L, buf + at, PyFloat_AS_DOUBLE(value), value);
            if (w < 0)
                return NULL;
            if (w == 0)
                Py_RETURN_NONE;
            at += w;
        } else {
            Py_RETURN_NONE;
        }
    }
    return PyUnicode_DecodeASCII(buf, at, NULL);
}

/* -- Monitor.stepped in C: the detector's kernel and the online head (runtime/livescore.py)
   scorer_new(fallback, replay, idle) -> capsule: live_loop's `score` where the samples
   are scored here. fallback(k, seq, time_us): live_finish's score, the sample in Python
   (whenever scorer_set's state does not cover it: a head's solve or full queue, a
   forecast not finite, or `on` 0); replay() -> the detector's fields of a sample its
   event tracker must see (flagged, or an event open), after the kernel scored it;
   idle(): live_loop's call once a read's lines are written and the next forecast needs
   the head's solve (OnlineHead.solve_ahead, then scorer_head), so that no sample waits
   for it.
   scorer_set(scorer, on, learning, threshold, detector, head, ring, ring_len, clock, keep):
     learning: the fields while the detector learns; threshold: ',"threshold":T';
     detector: None or (edgernn_detect, its struct, x and f (2C float64), score, flags);
     head: None or (edgernn_head_forecast, A, block_phi, qphi, qbase, qx, qw, qidx, std,
       d, block, cap, horizon): OnlineHead.step's buffers;
     ring, ring_len: the monitor's pending forecasts (horizon, C) float32, the oldest
       at clock[4];
     clock: int64 [head seen, made, qlo, qhi, ring start, samples scored here, the
       `made` the head's last solve was for];
     keep: what must stay alive while the scorer points into it.
   scorer_head(scorer, head, keep): the head's part again (after idle's solve). */
typedef int (*edgernn_detect_fn)(void *det, long n);
typedef void (*edgernn_head_fn)(const double *phi, const double *A, const double *std,
                                const double *base, long d, long c, float *out);
typedef struct {
    PyObject *fallback, *replay, *idle, *keep, *head_keep;
    int on;
    char learning[160], threshold[64];
    Py_ssize_t learning_len, threshold_len;
    edgernn_detect_fn detect;
    void *det;
    double *xf, *score;
    const int32_t *flags;
    edgernn_head_fn forecast;
    const double *A, *std;
    double *block_phi, *qphi, *qbase, *qx, *qw;
    int64_t *qidx;
    long d, block, cap, horizon;
    float *ring;
    Py_ssize_t ring_len;
    int64_t *clock;
} edgernn_scorer;

static const char SCORER[] = "edgernn.fastcall.scorer";
#define SCORE_FLAGGED 1 /* runtime/detector/kernel.c's row flags */
#define SCORE_LEARNING 2
#define SCORE_REPLAY 8

static void scorer_free(PyObject *capsule) {
    edgernn_scorer *S = PyCapsule_GetPointer(capsule, SCORER);
    if (!S)
        return;
    Py_XDECREF(S->fallback);
    Py_XDECREF(S->replay);
    Py_XDECREF(S->idle);
    Py_XDECREF(S->keep);
    Py_XDECREF(S->head_keep);
    PyMem_Free(S);
}

static PyObject *fc_scorer_new(PyObject *self, PyObject *args) {
    PyObject *fallback, *replay, *idle;
    if (!PyArg_ParseTuple(args, "OOO", &fallback, &replay, &idle))
        return NULL;
    if (!PyCallable_Check(fallback) || !PyCallable_Check(replay) || !PyCallable_Check(idle)) {
        PyErr_SetString(PyExc_TypeError, "scorer_new(fallback, replay, idle): callables");
        return NULL;
    }
    edgernn_scorer *S = PyMem_Calloc(1, sizeof *S);
    if (!S)
        return PyErr_NoMemory();
    Py_INCREF(fallback);
    Py_INCREF(replay);
    Py_INCREF(idle);
    S->fallback = fallback;
    S->replay = replay;
    S->idle = idle;
    PyObject *capsule = PyCapsule_New(S, SCORER, scorer_free);
    if (!capsule) {
        Py_DECREF(fallback);
        Py_DECREF(replay);
        Py_DECREF(idle);
        PyMem_Free(S);
    }
    return capsule;
}

static int copy_text(PyObject *text, char *to, size_t room, Py_ssize_t *len) {
    const char *u = PyUnicode_Check(text) ? PyUnicode_AsUTF8AndSize(text, len) : NULL;
    if (!u || (size_t)*len >= room) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "scorer_set: a text too long");
        return -1;
    }
    memcpy(to, u, (size_t)*len);
    return 0;
}

/* scorer_set's head (None, or the tuple it describes); -1 on an error */
static int scorer_set_head(edgernn_scorer *S, PyObject *head) {
    unsigned long long a[13] = {0};
    if (head != Py_None
        && !PyArg_ParseTuple(head, "KKKKKKKKKKKKK", &a[0], &a[1], &a[2], &a[3], &a[4], &a[5],
                             &a[6], &a[7], &a[8], &a[9], &a[10], &a[11], &a[12]))
        return -1;
    if (head != Py_None && (!a[0] || (long)a[9] < 1 || (long)a[10] < 1 || (long)a[12] < 1)) {
        PyErr_SetString(PyExc_ValueError, "scorer: a head without its buffers");
        return -1;
    }
    S->forecast = (edgernn_head_fn)(uintptr_t)a[0];
    S->A = (const double *)(uintptr_t)a[1];
    S->block_phi = (double *)(uintptr_t)a[2];
    S->qphi = (double *)(uintptr_t)a[3];
    S->qbase = (double *)(uintptr_t)a[4];
    S->qx = (double *)(uintptr_t)a[5];
    S->qw = (double *)(uintptr_t)a[6];
    S->qidx = (int64_t *)(uintptr_t)a[7];
    S->std = (const double *)(uintptr_t)a[8];
    S->d = (long)a[9];
    S->block = (long)a[10];
    S->cap = (long)a[11];
    S->horizon = (long)a[12];
    return 0;
}

static PyObject *fc_scorer_head(PyObject *self, PyObject *args) {
    PyObject *capsule, *head, *keep;
    if (!PyArg_ParseTuple(args, "OOO", &capsule, &head, &keep))
        return NULL;
    edgernn_scorer *S = PyCapsule_GetPointer(capsule, SCORER);
    if (!S || scorer_set_head(S, head) < 0)
        return NULL;
    Py_INCREF(keep);
    Py_XSETREF(S->head_keep, keep);
    Py_RETURN_NONE;
}

static PyObject *fc_scorer_set(PyObject *self, PyObject *args) {
    PyObject *capsule, *learning, *threshold, *det, *head, *keep;
    int on;
    unsigned long long ring, clock;
    Py_ssize_t ring_len;
    if (!PyArg_ParseTuple(args, "OiUUOOKnKO", &capsule, &on, &learning, &threshold, &det, &head,
                          &ring, &ring_len, &clock, &keep))
        return NULL;
    edgernn_scorer *S = PyCapsule_GetPointer(capsule, SCORER);
    if (!S)
        return NULL;
    unsigned long long a[5] = {0};
    if (det != Py_None && !PyArg_ParseTuple(det, "KKKKK", &a[0], &a[1], &a[2], &a[3], &a[4]))
        return NULL;
    S->detect = (edgernn_detect_fn)(uintptr_t)a[0];
    S->det = (void *)(uintptr_t)a[1];
    S->xf = (double *)(uintptr_t)a[2];
    S->score = (double *)(uintptr_t)a[3];
    S->flags = (const int32_t *)(uintptr_t)a[4];
    if (scorer_set_head(S, head) < 0)
        return NULL;
    if (copy_text(learning, S->learning, sizeof S->learning, &S->learning_len) < 0
        || copy_text(threshold, S->threshold, sizeof S->threshold, &S->threshold_len) < 0)
        return NULL;
    if (!ring || ring_len < 1 || !clock) {
        PyErr_SetString(PyExc_ValueError, "scorer_set: missing buffers");
        return NULL;
    }
    S->ring = (float *)(uintptr_t)ring;
    S->ring_len = ring_len;
    S->clock = (int64_t *)(uintptr_t)clock;
    Py_INCREF(keep);
    Py_XSETREF(S->keep, keep);
    S->on = on;
    Py_RETURN_NONE;
}

/* Whether the head's next forecast starts a block not solved yet */
static int scorer_solve_due(const edgernn_scorer *S) {
    const int64_t *k = S->clock;
    return S->forecast && k[1] > 0 && k[1] % S->block == 0 && k[6] != k[1];
}

/* Whether the next sample is the scorer's: its forecast due finite, the head between
   solves with room in its queue (else OnlineHead.step's Python does it) */
static int scorer_covers(const edgernn_scorer *S, const float *due, int C) {
    if (!S->on)
        return 0;
    if (S->forecast) {
        const int64_t *k = S->clock;
        if (scorer_solve_due(S) || k[3] >= S->cap || (k[0] >= S->horizon && k[2] >= k[3]))
            return 0;
    }
    for (int c = 0; S->detect && c < C; c++)
        if (!isfinite(due[c]))
            return 0;
    return 1;
}

/* OnlineHead.step (learn x with `weight`, correct the forecast f made from features h),
   the corrected forecast into out */
static void scorer_head(edgernn_scorer *S, int C, const float *x, const float *f,
                        const float *h, double weight, float *out) {
    int64_t *k = S->clock;
    const long d = S->d;
    int64_t seen = k[0], made = k[1];
    if (seen >= S->horizon) {
        int64_t lo = k[2];
        for (int c = 0; c < C; c++)
            S->qx[lo * C + c] = x[c];
        S->qw[lo] = weight;
        S->qidx[lo] = seen;
        k[2] = lo + 1;
    }
    k[0] = seen + 1;
    double *row = S->block_phi + (made % S->block) * d;
    for (long j = 0; j < d - 1; j++)
        row[j] = h[j];
    int64_t hi = k[3];
    memcpy(S->qphi + hi * d, row, sizeof(double) * (size_t)d);
    double *base = S->qbase + hi * C;
    for (int c = 0; c < C; c++)
        base[c] = f[c];
    k[3] = hi + 1;
    k[1] = made + 1;
    S->forecast(row, S->A, S->std, base, d, C, out);
}

/* The sample just stepped (values x, forecast f, features h) through the scorer, its
   line finished from q ('"forecast":{' written); as live_finish. */
static int scorer_take(edgernn_live *L, edgernn_scorer *S, live_pass *p, char *q,
                       const float *x, const float *f, const float *h, uint32_t seq,
                       uint32_t t) {
    const int C = L->channels;
    int64_t *k = S->clock;
    float *due = S->ring + k[4] * C;
    if (!scorer_covers(S, due, C))
        return live_finish(L, S->fallback, p, q, seq, t);
    char own[256];
    const char *fields = "";
    Py_ssize_t flen = 0;
    PyObject *made = NULL;
    double weight = 1.0;
    if (S->detect) {
        for (int c = 0; c < C; c++) {
            S->xf[c] = x[c];
            S->xf[C + c] = due[c];
        }
        if (S->detect(S->det, 1) != 0) {
            PyErr_SetString(PyExc_RuntimeError, "the detector kernel refused a sample");
            return -1;
        }
        int fl = S->flags[0];
        if (fl & SCORE_LEARNING) {
            fields = S->learning;
            flen = S->learning_len;
        } else if (fl & SCORE_REPLAY) {
            made = PyObject_CallNoArgs(S->replay);
            fields = made && PyUnicode_Check(made) ? PyUnicode_AsUTF8AndSize(made, &flen) : NULL;
            if (!fields) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_TypeError, "replay gave no str");
                Py_XDECREF(made);
                return -1;
            }
        } else { /* {"score": s, "anomaly": 0, "onset": 0, "threshold": T} */
            memcpy(own, ",\"score\":", 9);
            int w = put_field_float(L, own + 9, S->score[0], NULL);
            if (w <= 0) { /* json_float's text too long: the sample in Python after all */
                if (w == 0)
                    PyErr_SetString(PyExc_ValueError, "a score json_float cannot write");
                return -1;
            }
            char *o = own + 9 + w;
            memcpy(o, ",\"anomaly\":0,\"onset\":0", 22);
            o += 22;
            memcpy(o, S->threshold, (size_t)S->threshold_len);
            fields = own;
            flen = o + S->threshold_len - own;
        }
        if (fl & SCORE_FLAGGED)
            weight = 0.0;
    }
    float out[256];
    if (S->forecast)
        scorer_head(S, C, x, f, h, weight, out);
    else
        memcpy(out, f, sizeof(float) * (size_t)C);
    memcpy(due, out, sizeof(float) * (size_t)C); /* the oldest forecast out, this one in */
    k[4] = (k[4] + 1) % S->ring_len;
    k[5]++;
    Py_ssize_t start = q - L->text;
    int rc = -1;
    if (live_reserve(L, start + 2 * (L->key_at[C] + 34 * C) + flen + 8) == 0) {
        char *o = put_floats(L, L->text + start, out);
        if (o) {
            *o++ = '}';
            memcpy(o, fields, (size_t)flen);
            o += flen;
            memcpy(o, "}\n", 2);
            p->at = o + 2 - L->text;
            rc = 0;
        }
    }
    Py_XDECREF(made);
    return rc;
}

/* live_loop's turn once a read is taken and its lines written: the scorer's idle() where
   the head's next forecast needs a solve; -1 on a Python error */
static int scorer_idle(PyObject *score) {
    if (!score || !PyCapsule_CheckExact(score))
        return 0;
    edgernn_scorer *S = PyCapsule_GetPointer(score, SCORER);
    if (!S)
        return -1;
    if (!S->on || !scorer_solve_due(S))
        return 0;
    /* The lines just written woke their reader, likely on this CPU (the scheduler puts a
       woken task beside its waker): let it read them before the solve takes the CPU. */
    sched_yield();
    PyObject *r = PyObject_CallNoArgs(S->idle);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* live_take's score: a scorer (scorer_take) or a callable (live_finish); x, f and the
   features h back to back in the sample's row */
static int scorer_sample(edgernn_live *L, PyObject *score, live_pass *p, char *q,
                         const float *x, const float *f, uint32_t seq, uint32_t t) {
    if (PyCapsule_CheckExact(score)) {
        edgernn_scorer *S = PyCapsule_GetPointer(score, SCORER);
        return S ? scorer_take(L, S, p, q, x, f, f + L->channels, seq, t) : -1;
    }
    return live_finish(L, score, p, q, seq, t);
}

/* f32_token(v) -> RecordWriter's token for the float v (as float32), or None when not
   sure (then json_float's way) */
static PyObject *fc_f32_token(PyObject *self, PyObject *arg) {
    double d = PyFloat_AsDouble(arg);
    if (d == -1.0 && PyErr_Occurred())
        return NULL;
    char buf[40];
    int w = f32_token((float)d, buf);
    if (w <= 0)
        Py_RETURN_NONE;
    return PyUnicode_FromStringAndSize(buf, w);
}

static PyMethodDef methods[] = {
    {"f32_tokens", (PyCFunction)(void (*)(void))fc_f32_tokens, METH_FASTCALL, NULL},
    {"bind", fc_bind, METH_VARARGS, NULL},
    {"step", (PyCFunction)(void (*)(void))fc_step, METH_FASTCALL, NULL},
    {"f32_decimals", (PyCFunction)(void (*)(void))fc_f32_decimals, METH_FASTCALL, NULL},
    {"live_bind", fc_live_bind, METH_VARARGS, NULL},
    {"live_frames", (PyCFunction)(void (*)(void))fc_live_frames, METH_FASTCALL, NULL},
    {"live_loop", (PyCFunction)(void (*)(void))fc_live_loop, METH_FASTCALL, NULL},
    {"live_fields", (PyCFunction)(void (*)(void))fc_live_fields, METH_FASTCALL, NULL},
    {"live_pairs", (PyCFunction)(void (*)(void))fc_live_pairs, METH_FASTCALL, NULL},
    {"scorer_new", fc_scorer_new, METH_VARARGS, NULL},
    {"scorer_set", fc_scorer_set, METH_VARARGS, NULL},
    {"scorer_head", fc_scorer_head, METH_VARARGS, NULL},
    {"f32_token", fc_f32_token, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_edgernn_fastcall", NULL, -1,
                                    methods};

PyMODINIT_FUNC PyInit__edgernn_fastcall(void) {
    f32_tables();
    crc_table();
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddStringConstant(m, "SOURCE_SHA256", EDGERNN_FASTCALL_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
"""

_fastcall: list = []  # [module or None], once per process


def fastcall_module():
    """The fast-call extension (built on first use, then cached), or None."""
    if not _fastcall:
        try:
            _fastcall.append(_load_fastcall())
        except (CStepUnavailable, OSError, ImportError):
            _fastcall.append(None)
    return _fastcall[0]


def _load_fastcall():
    import importlib.machinery
    import importlib.util
    import sysconfig

    if os.environ.get("EDGERNN_NO_FASTCALL"):
        return None
    include = sysconfig.get_paths().get("include")
    if not include or not os.path.isfile(os.path.join(include, "Python.h")):
        return None
    digest = hashlib.sha256(_FASTCALL_SOURCE.encode()).hexdigest()
    # The Python it is built for is part of the source, hence of the cache key.
    source = (
        f'#define EDGERNN_FASTCALL_SHA256 "{digest}"\n'
        f"/* {sys.implementation.cache_tag} {sys.version.split()[0]} {sys.abiflags} */\n"
        + _FASTCALL_SOURCE
    )
    for rebuild in (False, True):
        lib = compile_library(source, rebuild=rebuild, extra_flags=(f"-I{include}",))
        alias = _fresh_copy(lib)
        try:
            loader = importlib.machinery.ExtensionFileLoader("_edgernn_fastcall", alias)
            spec = importlib.util.spec_from_file_location("_edgernn_fastcall", alias, loader=loader)
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
        except ImportError:
            module = None
        finally:
            os.unlink(alias)
        if module is not None and getattr(module, "SOURCE_SHA256", None) == digest:
            return module
        if rebuild:
            remove_library(lib)
    return None
