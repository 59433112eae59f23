"""`edgernn export --module pkg.mod:factory --weights model.pt --example-shape T,F -o OUT`:
your own PyTorch module, built by your code, with your weights, through export_module."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping

from edgernn.errors import ExportError, require

CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")


def build_module(spec: str):
    """The nn.Module named by 'pkg.mod:attr' or 'path/to/file.py:attr': an nn.Module
    attribute, or a callable (a class, a factory) that returns one when called bare."""
    torch = require("torch")
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise ExportError(f"--module {spec!r}: expected pkg.mod:factory or file.py:factory")
    source = import_source(where)
    try:
        target = getattr(source, attr)
    except AttributeError:
        raise ExportError(f"--module {spec!r}: {where} has no attribute {attr!r}") from None
    if not isinstance(target, torch.nn.Module):
        if not callable(target):
            raise ExportError(f"--module {spec!r}: {attr} is a {type(target).__name__}, "
                              "neither an nn.Module nor a callable returning one")  # fmt: skip
        try:
            target = target()
        except Exception as e:  # the user's code
            raise ExportError(f"--module {spec!r}: {attr}() failed: {type(e).__name__}: "
                              f"{first_line(e)}") from e  # fmt: skip
        if not isinstance(target, torch.nn.Module):
            raise ExportError(f"--module {spec!r}: {attr}() returned a {type(target).__name__}, "
                              "not an nn.Module")  # fmt: skip
    return target


def import_source(where: str):
    """A dotted module (found from the current directory too, as `python -m` would) or a
    .py file (registered in sys.modules under its stem, so torch.load finds its classes)."""
    try:
        if where.endswith(".py") or os.sep in where:
            if not os.path.isfile(where):
                raise ExportError(f"--module: no such file {where}")
            name = os.path.splitext(os.path.basename(where))[0]
            spec = importlib.util.spec_from_file_location(name, where)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            return module
        with cwd_on_path():
            return importlib.import_module(where)
    except ExportError:
        raise
    except Exception as e:  # import runs the user's code: anything can happen
        raise ExportError(f"--module: cannot import {where}: {type(e).__name__}: "
                          f"{first_line(e)}") from e  # fmt: skip


@contextlib.contextmanager
def cwd_on_path():
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def load_weights(module, path: str) -> None:
    """Load a state_dict (or a checkpoint dict holding one, or a whole module saved with
    torch.save) from `path` into `module`, strictly."""
    torch = require("torch")
    if not os.path.isfile(path):
        raise ExportError(f"--weights: no such file {path}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a plain state_dict: maybe a whole pickled module
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise ExportError(f"--weights {path}: cannot load it with torch.load: "
                              f"{type(e).__name__}: {first_line(e)}") from e  # fmt: skip
    state = state_dict_of(saved, path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ExportError(f"--weights {path} does not fit the module: {mismatch(e)}") from e


def state_dict_of(saved, path: str) -> Mapping:
    torch = require("torch")
    if isinstance(saved, torch.nn.Module):
        return saved.state_dict()
    if isinstance(saved, Mapping):
        if saved and all(torch.is_tensor(v) for v in saved.values()):
            return strip_prefix(saved, "module.")  # saved from DataParallel / DDP
        for key in CHECKPOINT_KEYS:
            if key in saved:
                return state_dict_of(saved[key], path)
    raise ExportError(f"--weights {path}: holds a {type(saved).__name__}, not a state_dict "
                      "or an nn.Module")  # fmt: skip


def strip_prefix(state: Mapping, prefix: str) -> Mapping:
    if all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def mismatch(error: RuntimeError) -> str:
    """load_state_dict's multi-line complaint, condensed to one line."""
    lines = [ln.strip() for ln in str(error).splitlines()[1:] if ln.strip()]
    text = " ".join(lines) or first_line(error)
    return text if len(text) <= 300 else text[:297] + "..."


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def example_tensor(shape: tuple[int, int], time_first: bool, seed: int = 0):
    """A random standard-normal example: [1, T, F] (or [T, 1, F] when time first)."""
    torch = require("torch")
    steps, features = shape
    generator = torch.Generator().manual_seed(seed)
    dims = (steps, 1, features) if time_first else (1, steps, features)
    return torch.randn(dims, generator=generator)


def parse_example_shape(text: str) -> tuple[int, int]:
    import argparse

    parts = text.split(",")
    try:
        steps, features = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected T,F (two integers), got {text!r}") from None
    if steps < 2 or features < 1:
        raise argparse.ArgumentTypeError(f"need T >= 2 steps and F >= 1 features, got {text!r}")
    return steps, features


def module_flags_given(args) -> list[str]:
    """The --module-only flags given on the command line (an error without --module)."""
    defaults = {"weights": None, "example_shape": None, "time_first": False, "channels": None,
                "task": "custom", "classes": None, "targets": None, "output_names": None}  # fmt: skip
    return [
        "--" + name.replace("_", "-")
        for name, default in defaults.items()
        if getattr(args, name) != default
    ]


def export_from_args(args):
    """The CLI path: build, load, export; returns export_module's report."""
    from edgernn.export.module_export import export_module

    if args.example_shape is None:
        raise ExportError("--module needs --example-shape T,F (steps, input features)")
    module = build_module(args.module)
    if args.weights:
        load_weights(module, args.weights)
    example = example_tensor(args.example_shape, args.time_first)
    return export_module(
        module, example, args.out, time_first=args.time_first, output_names=args.output_names,
        channels=args.channels, task=args.task, classes=args.classes, targets=args.targets,
        opset=args.opset,
    )  # fmt: skip
