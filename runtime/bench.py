"""Per-sample speed of edgernn against what a user would otherwise write.

Single stream (batch 1, one thread), per model:
    edgernn (<backend>)       Stream.step, for every backend available here
    onnxruntime session.run   plain InferenceSession.run() on the same exported
                              graph (a torch.onnx.export plus metadata), state fed back
    torch eager               the PyTorch module stepped one sample at a time
    window-50 onnxruntime     a stateless graph re-run on the last 50 samples for every
                              new sample (the common sliding-window pattern)
Many streams: `batch` independent streams stepped together, as a fraction of this
machine's single-thread float32 GEMM rate (numpy/BLAS, measured in the same run).
Footprint: import time, model load time and resident memory, in a fresh process.

Alternatives are interleaved round by round (the machine may be shared and noisy)
and every figure is a median or percentile over all rounds. Nothing here asserts a
time: `run_bench` measures and `format_report` prints.
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from edgernn.errors import InputError
from edgernn.runtime.model import BACKENDS, Model, onnxruntime_available

WINDOW = 50
GEMM_SIZE = 1024  # the reference matmul: (1024 x 1024) @ (1024 x 1024) float32
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
}  # fmt: skip
REFERENCE_MODELS = (  # (label, cell, layers): the LSTM-64 plus GRU and 2 layers
    ("lstm-64", "lstm", 1),
    ("gru-64", "gru", 1),
    ("lstm-64x2", "lstm", 2),
)


@dataclass
class BenchConfig:
    samples: int = 2000  # timed samples per alternative per round
    rounds: int = 5
    batch: int = 1024
    batch_steps: int = 30  # timed batched steps per round
    hidden: int = 64  # reference models
    channels: int = 1
    seed: int = 0

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(samples=150, rounds=2, batch=64, batch_steps=3, hidden=16)


# ----------------------------------------------------------------------------------
# timing


def _time_calls(fn: Callable, samples: np.ndarray, n: int, offset: int) -> np.ndarray:
    """Nanoseconds of each of n calls fn(sample)."""
    out = np.empty(n, dtype=np.int64)
    clock = time.perf_counter_ns
    count = len(samples)
    for i in range(n):
        x = samples[(offset + i) % count]
        t0 = clock()
        fn(x)
        out[i] = clock() - t0
    return out


def _interleaved(steppers: dict[str, Callable], samples: np.ndarray, cfg: BenchConfig) -> dict:
    """Time every stepper round by round, the order rotating; per-call percentiles."""
    times = {name: [] for name in steppers}
    names = list(steppers)
    for name in names:  # warm-up: first calls pay for lazy initialisation
        _time_calls(steppers[name], samples, min(200, cfg.samples), 0)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection landing in one alternative's round is noise
    try:
        for r in range(cfg.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                times[name].append(
                    _time_calls(steppers[name], samples, cfg.samples, r * cfg.samples)
                )
    finally:
        if gc_was_enabled:
            gc.enable()
    result = {}
    for name, chunks in times.items():
        us = np.concatenate(chunks) / 1e3
        p50 = float(np.median(us))
        result[name] = {
            "p50_us": p50,
            "p99_us": float(np.percentile(us, 99)),
            "round_p50_us": [float(np.median(c) / 1e3) for c in chunks],
            "samples_per_s": 1e6 / p50,
        }
    return result


def _signal(meta, n: int, seed: int) -> np.ndarray:
    """A noisy sine per channel in the model's raw units: (n, C) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    z = np.sin(2 * np.pi * t / 37.0 + np.arange(meta.n_channels)) + 0.1 * rng.standard_normal(
        (n, meta.n_channels)
    )
    if not meta.norm_std:  # a graph without our normalisation: unit scale
        return z.astype(np.float32)
    return (z * np.asarray(meta.norm_std) + np.asarray(meta.norm_mean)).astype(np.float32)


# ----------------------------------------------------------------------------------
# the alternatives


def _ort_session(path: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def _naive_ort(path: str, meta, batched: bool = True) -> Callable:
    """What the onnxruntime docs show: session.run with a feed dict, state fed back (and
    any constant inputs fed every step)."""
    from edgernn.runtime.metadata import graph_shape

    session = _ort_session(path)
    state = {s.input: np.zeros(graph_shape(s.shape, 1), s.dtype) for s in meta.states}
    consts = {c.name: c.array(None) for c in meta.consts}
    names = [meta.output] + [s.output for s in meta.states]
    primary = meta.primary.batch_axis

    def step(x):
        outputs = session.run(names, {meta.input: x[None] if batched else x, **consts, **state})
        for spec, new in zip(meta.states, outputs[1:]):
            state[spec.input] = new
        return outputs[0] if primary is None else np.take(outputs[0], 0, axis=primary)

    return step


def _torch_eager(module) -> Callable:
    import torch

    state = [module.init_state(1)]

    def step(x):
        with torch.inference_mode():
            y, state[0] = module(torch.from_numpy(x).view(1, 1, -1), state[0])
        return y[0, 0].numpy()

    return step


def _window_ort(module, meta, workdir: str) -> Callable:
    """Export the module as a stateless graph over the last WINDOW samples (zero start
    state inside), then re-run it for every new sample."""
    import torch

    from edgernn.train.model import Forecaster

    class Window(torch.nn.Module):
        def __init__(self, model: Forecaster):
            super().__init__()
            self.model = model

        def forward(self, xw):  # (1, WINDOW, C) -> (1, C): forecast after the last sample
            y, _ = self.model(xw)
            return y[:, -1]

    path = os.path.join(workdir, f"window-{id(module)}.onnx")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Window(module).eval(), (torch.zeros(1, WINDOW, meta.n_channels),), path,
            input_names=["xw"], output_names=["y"], opset_version=17, dynamo=False,
        )  # fmt: skip
    session = _ort_session(path)
    buf = np.zeros((1, WINDOW, meta.n_channels), np.float32)

    def step(x):
        buf[0, :-1] = buf[0, 1:]  # slide the window by one sample
        buf[0, -1] = x
        return session.run(None, {"xw": buf})[0][0]

    return step


def _edgernn(model: Model) -> Callable:
    return model.stream().step


# ----------------------------------------------------------------------------------
# reference models (need torch + onnx)


def build_reference_models(workdir: str, cfg: BenchConfig) -> list[tuple[str, str, object]]:
    """(label, path, torch module) for each reference model, exported into workdir."""
    import torch

    from edgernn.export.onnx_export import export_onnx
    from edgernn.train.model import Forecaster, ModelConfig

    torch.manual_seed(cfg.seed)
    out = []
    for label, cell, layers in REFERENCE_MODELS:
        module = Forecaster(
            ModelConfig(n_channels=cfg.channels, cell=cell, hidden=cfg.hidden, layers=layers)
        )
        module.set_normalisation([20.0] * cfg.channels, [5.0] * cfg.channels)
        module.eval()
        path = os.path.join(workdir, f"{label}.onnx")
        export_onnx(module, path)
        out.append((label.replace("64", str(cfg.hidden)), path, module))
    return out


def _available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


# ----------------------------------------------------------------------------------
# single stream, batched, footprint


def macs_per_sample(meta) -> int:
    """Multiply-adds of one step of our forecasters (other graphs: not counted)."""
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[meta.cell]
    total = 0
    for layer in range(meta.layers):
        n_in = meta.n_channels if layer == 0 else meta.hidden
        total += gates * meta.hidden * (n_in + meta.hidden)
    return total + meta.hidden * meta.n_channels


def bench_single(
    label: str, path: str, module, cfg: BenchConfig, workdir: str, notes: list
) -> dict:
    models = {}
    for backend in BACKENDS[1:]:
        try:
            models[backend] = Model(path, backend=backend)
        except Exception as e:  # a backend unavailable here is a note, not a failure
            notes.append(f"{label}: edgernn backend {backend} unavailable ({str(e)[:120]})")
    auto = Model(path)
    meta = auto.meta
    steppers: dict[str, Callable] = {f"edgernn ({b})": _edgernn(m) for b, m in models.items()}
    if onnxruntime_available():
        steppers["onnxruntime session.run"] = _naive_ort(
            path, meta, batched=auto.input_shape[0] is None
        )
    else:
        notes.append("onnxruntime is not installed: plain session.run comparison skipped")
    if module is not None and _available("torch"):
        import torch

        torch.set_num_threads(1)
        steppers["torch eager"] = _torch_eager(module)
        if onnxruntime_available():
            steppers[f"window-{WINDOW} onnxruntime"] = _window_ort(module, meta, workdir)
    elif module is None:
        notes.append(
            f"{label}: torch eager and window-{WINDOW} need the PyTorch module; run "
            "`edgernn bench` without a model file (with the [train] extra) to include them"
        )
    else:
        notes.append("torch is not installed: torch eager and window comparisons skipped")

    samples = _signal(meta, 4096, cfg.seed)
    agreement = _agreement(steppers, samples[:200], f"edgernn ({auto.backend})")
    results = _interleaved(steppers, samples, cfg)
    ref = results[f"edgernn ({auto.backend})"]["p50_us"]
    for name, r in results.items():
        r["ratio_to_edgernn"] = r["p50_us"] / ref
        if name in agreement:
            r["max_abs_diff"] = agreement[name]
    c_floor = None
    if "c" in models:  # the bare C step against one pass over its weights, timed in C
        from edgernn.runtime import cfloor

        c_floor = cfloor.bench_entry(
            models["c"], results["edgernn (c)"]["p50_us"], rounds=min(400, 40 * cfg.rounds)
        )
    return {
        "model": label,
        "path": path,
        "task": meta.task,
        "cell": meta.cell,
        "layers": meta.layers,
        "hidden": meta.hidden,
        "channels": meta.n_channels,
        "macs_per_sample": macs_per_sample(meta) if not auto.generic else None,
        "edgernn_backend": auto.backend,
        "results": results,
        "c_floor": c_floor,
    }


def _agreement(steppers: dict[str, Callable], samples: np.ndarray, reference: str) -> dict:
    """Max |difference| of each stateful alternative's forecasts from edgernn's, all
    starting from the zero state (a broken comparison shows here, not as a speed-up)."""
    outputs = {}
    for name, step in steppers.items():
        if name.startswith("window"):
            continue  # forgets everything older than the window: differs by design
        outputs[name] = np.stack([np.asarray(step(x), np.float32) for x in samples])
    return {n: float(np.max(np.abs(y - outputs[reference]))) for n, y in outputs.items()}


def bench_batched(path: str, cfg: BenchConfig) -> dict:
    """`batch` streams stepped together with each edgernn backend, interleaved round by
    round with a float32 GEMM in the same process, all single-threaded (a fresh
    process with one BLAS thread): µs per step and the fraction of the GEMM rate."""
    args = f"{path!r}, {cfg.batch}, {cfg.batch_steps}, {cfg.rounds}, {cfg.seed}"
    code = (
        "import json; from edgernn.runtime.bench import batched_worker; "
        f"print(json.dumps(batched_worker({args})))"
    )
    return json.loads(_python(code).strip().splitlines()[-1])


def batched_worker(path: str, batch: int, steps: int, rounds: int, seed: int = 0) -> dict:
    streams, meta = {}, None
    for backend in BACKENDS[1:]:
        try:
            model = Model(path, backend=backend)
        except Exception:  # unavailable here; bench_single already noted why
            continue
        streams[backend], meta = model.stream(batch=batch), model.meta
    x = np.repeat(_signal(meta, 1, seed), batch, axis=0)  # (B, C)
    for stream in streams.values():
        stream.step(x)
    n = GEMM_SIZE
    a = np.random.default_rng(seed).standard_normal((n, n)).astype(np.float32)
    b = a.copy()
    a @ b
    seconds = {name: [] for name in [*streams, "gemm"]}
    for _ in range(rounds):
        for name, stream in streams.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                stream.step(x)
            seconds[name].append((time.perf_counter() - t0) / steps)
        for _ in range(3):
            t0 = time.perf_counter()
            a @ b
            seconds["gemm"].append(time.perf_counter() - t0)
    gemm = 2.0 * n**3 / float(np.median(seconds["gemm"])) / 1e9
    counted = meta.is_forecaster and meta.cell in ("rnn", "gru", "lstm")
    flops = 2.0 * batch * macs_per_sample(meta) if counted else None
    out = {"batch": batch, "gemm_gflops": gemm, "gemm_size": n, "backends": {}}
    for name in streams:
        step_s = float(np.median(seconds[name]))
        out["backends"][name] = {
            "step_us": step_s * 1e6,
            "per_sample_us": step_s * 1e6 / batch,
            "samples_per_s": batch / step_s,
            "gflops": None if flops is None else flops / step_s / 1e9,
            "gemm_fraction": None if flops is None else flops / step_s / 1e9 / gemm,
        }
    return out


_FOOTPRINT_CODE = """
import json, os, time
t0 = time.perf_counter()
import edgernn.runtime
t1 = time.perf_counter()
from edgernn.runtime import Model
model = Model({path!r}, backend={backend!r})
t2 = time.perf_counter()
model.stream().step([0.0] * model.n_channels)
rss = 0.0
try:
    with open("/proc/self/status") as f:
        rss = [int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:")][0]
except OSError:
    import resource, sys
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss = peak / 1024 / (1024 if sys.platform == "darwin" else 1)
import sys
print(json.dumps({{"import_s": t1 - t0, "load_ms": (t2 - t1) * 1e3, "rss_mb": rss,
                  "backend": model.backend, "torch_imported": "torch" in sys.modules,
                  "onnxruntime_imported": "onnxruntime" in sys.modules}}))
"""


def footprint(path: str, backend: str = "auto", repeats: int = 5) -> dict:
    """Import time, load time (median of `repeats` fresh processes) and RSS after one step,
    with the modules' bytecode cached as an installed package has it: a first, unmeasured
    process writes it even where PYTHONDONTWRITEBYTECODE is set (compiling edgernn's
    sources would otherwise count as load time in every process)."""
    code = _FOOTPRINT_CODE.format(path=path, backend=backend)
    cached = {"PYTHONDONTWRITEBYTECODE": None}
    _python(code, cached)
    runs = [json.loads(_python(code, cached).splitlines()[-1]) for _ in range(repeats)]
    out = dict(runs[-1])
    for key in ("import_s", "load_ms", "rss_mb"):
        out[key] = float(np.median([r[key] for r in runs]))
    return out


def first_load_ms(path: str) -> Optional[float]:
    """Load with an empty compile cache: what the first load of a new shape costs."""
    with tempfile.TemporaryDirectory() as cache:
        code = (
            "import time; from edgernn.runtime import Model; t = time.perf_counter(); "
            f"m = Model({path!r}, backend='c'); print((time.perf_counter() - t) * 1e3)"
        )
        try:
            return float(_python(code, {"EDGERNN_CACHE_DIR": cache}).splitlines()[-1])
        except (RuntimeError, ValueError, IndexError):
            return None


def _python(code: str, env_extra: Optional[dict] = None) -> str:
    """Run `code` in a fresh interpreter; env_extra's None values unset a variable."""
    env = {**os.environ, **SINGLE_THREAD_ENV, **(env_extra or {})}
    env = {k: v for k, v in env.items() if v is not None}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"benchmark subprocess failed: {last}")
    return proc.stdout


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [
                line.split(":", 1)[1].strip()
                for line in f
                if line.startswith(("model name", "Model"))
            ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    versions = {}
    for name in ("numpy", "onnxruntime", "torch"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        **versions,
    }


# ----------------------------------------------------------------------------------
# the whole run


def run_bench(model_path: Optional[str] = None, cfg: Optional[BenchConfig] = None,
              progress: Optional[Callable[[str], None]] = None) -> dict:  # fmt: skip
    """Measure everything; returns the JSON-able report."""
    cfg = cfg or BenchConfig()
    say = progress or (lambda msg: None)
    notes: list[str] = []
    started = time.time()
    with tempfile.TemporaryDirectory() as workdir:
        if model_path is not None:
            if not os.path.isfile(model_path):
                raise InputError(f"{model_path}: no such model file")
            first = Model(model_path)  # a clear ModelFormatError before any timing
            models = [(os.path.basename(model_path), model_path, None)]
            if not first.batchable:
                notes.append(f"{models[0][0]}: no batch axis, so no many-streams run")
        elif _available("torch") and _available("onnx"):
            say("exporting the reference models ...")
            models = build_reference_models(workdir, cfg)
        else:
            raise InputError(
                "no model given and torch/onnx are not installed to build the reference "
                "models: run `edgernn bench MODEL.onnx`"
            )
        single = []
        for label, path, module in models:
            say(f"single stream: {label} ...")
            single.append(bench_single(label, path, module, cfg, workdir, notes))
        lead = Model(models[0][1])
        batched = None
        if lead.batchable:
            say(f"{cfg.batch} streams ...")
            batched = {"model": models[0][0], **bench_batched(models[0][1], cfg)}
        say("footprint ...")
        foot = {"auto": footprint(models[0][1], "auto")}
        if onnxruntime_available():
            foot["onnxruntime"] = footprint(models[0][1], "onnxruntime")
        # the C step serves our forecasters only: no compile to time for other graphs
        foot["first_load_compile_ms"] = None if lead.generic else first_load_ms(models[0][1])
    return {
        "machine": machine_info(),
        "config": cfg.__dict__,
        "single": single,
        "batched": batched,
        "footprint": foot,
        "notes": sorted(set(notes)),
        "seconds": time.time() - started,
    }


def format_report(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"edgernn bench on {m['cpu']} ({m['machine']}, {m['cores']} cores), python {m['python']}, "
        f"numpy {m['numpy']}, onnxruntime {m['onnxruntime']}, torch {m['torch']}",
        "",
        "Single stream, batch 1, one thread: per-sample latency",
        f"{'model':<14} {'alternative':<28} {'p50 µs':>8} {'p99 µs':>8} {'samples/s':>10} "
        f"{'× edgernn':>9} {'max |Δy|':>9}",
    ]
    for entry in report["single"]:
        for name, r in entry["results"].items():
            diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "-"
            lines.append(
                f"{entry['model']:<14} {name:<28} {r['p50_us']:8.2f} {r['p99_us']:8.2f} "
                f"{r['samples_per_s']:10,.0f} {r['ratio_to_edgernn']:9.2f} {diff:>9}"
            )
    from edgernn.runtime.cfloor import format_section

    lines += format_section(report["single"])
    b = report["batched"]
    if b is not None:
        lines += [
            "",
            f"{b['batch']} streams stepped together ({b['model']}); single-thread float32 GEMM "
            f"rate {b['gemm_gflops']:.1f} GFLOP/s",
            f"{'backend':<14} {'µs/step':>10} {'µs/sample':>10} {'samples/s':>12} {'GFLOP/s':>8} {'of GEMM':>8}",
        ]
    for name, r in (b or {}).get("backends", {}).items():
        rate = "-" if r["gflops"] is None else f"{r['gflops']:.1f}"
        share = "-" if r["gemm_fraction"] is None else f"{r['gemm_fraction']:.0%}"
        lines.append(
            f"{name:<14} {r['step_us']:10.1f} {r['per_sample_us']:10.3f} {r['samples_per_s']:12,.0f} "
            f"{rate:>8} {share:>8}"
        )
    lines += ["", "Footprint (fresh process)"]
    for name, f in report["footprint"].items():
        if isinstance(f, dict):
            lines.append(
                f"  backend {name:<12} ({f['backend']}): import edgernn.runtime {f['import_s'] * 1e3:.0f} ms, "
                f"model load {f['load_ms']:.1f} ms, RSS {f['rss_mb']:.1f} MB"
            )
    if report["footprint"].get("first_load_compile_ms") is not None:
        lines.append(
            f"  first load of a new shape (C compile): {report['footprint']['first_load_compile_ms']:.0f} ms"
        )
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)
