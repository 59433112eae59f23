"""Many and large sensor logs: find them, parse each CSV once, memory-map the rest.

`edgernn train` accepts files, directories (every *.csv below them) and glob patterns.
Each CSV is parsed once into a float32 .npy file in a cache directory and from then on
opened with np.load(mmap_mode="r"): training touches only the pages of the windows it
draws, so months of logs from many devices never sit in memory at once. The cache key
holds the file's path, size and modification time and the column selection, so an
edited log is parsed again. numpy only.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgernn.errors import DataError
from edgernn.runtime.csvdata import default_decimal, read_csv

CACHE_FORMAT = 2  # 2: a pandas row-index column is no channel
SHOWN_REASONS = 3  # bad rows named in a skip note
GLOB_CHARS = set("*?[")


@dataclass
class LogFile:
    """One parsed log: its raw values memory-mapped from the cache."""

    path: str
    channels: list[str]
    values: np.ndarray  # (T, C) float32, read-only memory map
    # --skip-bad-rows: the file's rows skipped as bad (line numbers, and why), and the
    # stretch between them this LogFile is (its first and last line numbers)
    skipped: dict[int, str] | None = None
    lines: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.values)


def rank_from_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as torchrun sets them; (0, 0, 1) otherwise. No torch."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def expand_paths(paths: Sequence[str]) -> list[str]:
    """Files as given; directories -> their *.csv (recursive, sorted); globs -> sorted matches.

    Duplicates are dropped (first occurrence wins) so a file is never trained on twice.
    """
    out: list[str] = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(p, "**", "*.csv"), recursive=True))
            if not found:
                raise DataError(f"{p}: directory holds no .csv files")
        elif GLOB_CHARS & set(p) and not os.path.exists(p):
            found = sorted(f for f in glob.glob(p, recursive=True) if os.path.isfile(f))
            if not found:
                raise DataError(f"{p}: pattern matches no files")
        else:
            found = [p]  # a missing file is reported by the reader, with its name
        out.extend(found)
    return list(dict.fromkeys(out))


def cache_key(
    path: str, channels: Sequence[str] | None, ignore: Sequence[str], skip_bad: bool = False
) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from e
    ident = [CACHE_FORMAT, os.path.realpath(path), st.st_size, st.st_mtime_ns,
             list(channels) if channels is not None else None, sorted(ignore)]  # fmt: skip
    if default_decimal() != ".":  # --decimal , parses the same file to other values
        ident.append(default_decimal())
    if skip_bad:  # the same file, its bad rows skipped instead of refused
        ident.append("skip-bad-rows")
    digest = hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:16]
    return f"{os.path.splitext(os.path.basename(path))[0][:40]}-{digest}"


def _write_atomic(path: str, write: Callable[[str], None]) -> None:
    """Write through a private temporary name: concurrent ranks never see half a file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def parse_to_cache(path: str, channels, ignore, cache_dir: str, skip_bad: bool = False) -> str:
    """Parse one CSV into cache_dir (if not there yet); returns the cache entry's stem.
    skip_bad: rows with a bad cell are skipped; the entry records where the stretches
    between them start and end (stretches, below)."""
    stem = os.path.join(cache_dir, cache_key(path, channels, ignore, skip_bad))
    if os.path.isfile(stem + ".json") and os.path.isfile(stem + ".npy"):
        return stem
    table = read_csv(path, channels=channels, ignore=ignore, on_bad="skip" if skip_bad else "error")
    info = {"path": path, "channels": table.channels, "rows": len(table)}
    if skip_bad:
        bad = table.bad_rows
        info["skipped"] = {str(n): why for n, why in bad.items()}
        info["stretches"] = [  # kept-row positions [a, b) and their first and last lines
            [a, b, table.lines[a], table.lines[b - 1]] for a, b in stretches(table.lines, bad)
        ]
    os.makedirs(cache_dir, exist_ok=True)

    def save_npy(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(table.values, dtype=np.float32))

    def save_json(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(info, fh)

    _write_atomic(stem + ".npy", save_npy)
    _write_atomic(stem + ".json", save_json)  # written last: its presence marks a whole entry
    return stem


def stretches(lines: Sequence[int], bad: Sequence[int]) -> list[list[int]]:
    """[first, end) kept-row positions of the runs of kept rows no bad row interrupts
    (a blank line does not: it holds no sample). lines: each kept row's line number."""
    if not len(lines):
        return []
    at = np.searchsorted(np.asarray(lines), np.asarray(sorted(bad), dtype=np.int64))
    cuts = [0, *sorted({int(k) for k in at if 0 < k < len(lines)}), len(lines)]
    return [[a, b] for a, b in zip(cuts, cuts[1:])]


def skip_note(path: str, skipped: dict[int, str], kept: list[int], dropped: list[int]) -> str:
    """One line on what --skip-bad-rows did to a file."""
    shown = "; ".join(list(skipped.values())[:SHOWN_REASONS])  # each names its row
    more = f"; {len(skipped) - SHOWN_REASONS} more" if len(skipped) > SHOWN_REASONS else ""
    note = f"{path}: skipped {len(skipped)} bad row(s) ({shown}{more}); "
    note += f"{len(kept)} stretch(es) train ({', '.join(map(str, kept))} rows)"
    if dropped:
        note += f", {len(dropped)} too short to train on dropped ({sum(dropped)} rows)"
    return note


def open_cached(stem: str, path: str) -> LogFile:
    try:
        with open(stem + ".json") as fh:
            info = json.load(fh)
        values = np.load(stem + ".npy", mmap_mode="r")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable cache entry {stem} ({e}); delete it") from e
    if values.ndim != 2 or values.shape != (info["rows"], len(info["channels"])):
        raise DataError(f"{path}: cache entry {stem} is damaged; delete it")
    return LogFile(path=path, channels=list(info["channels"]), values=values)


def open_stretches(stem: str, path: str) -> list[LogFile]:
    """A --skip-bad-rows entry: one LogFile per stretch between bad rows."""
    whole = open_cached(stem, path)
    with open(stem + ".json") as fh:
        info = json.load(fh)
    skipped = {int(n): why for n, why in info.get("skipped", {}).items()}
    if not skipped:
        return [whole]
    return [
        LogFile(path=f"{path} rows {first}-{last}", channels=whole.channels,
                values=whole.values[a:b], skipped=skipped, lines=(first, last))
        for a, b, first, last in info["stretches"]
    ]  # fmt: skip


def load_logs(
    paths: Sequence[str],
    cache_dir: str,
    channels: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] | None = None,
    skip_bad: bool = False,
) -> list[LogFile]:
    """Parse (into the cache) and memory-map every log; all must share the same channels.
    skip_bad: each file's stretches between rows with a bad cell, as LogFiles of their own.

    Under torchrun each rank parses its share of the files, waits at `barrier`, then
    maps them all (parsing any its node cannot see, e.g. a node-local cache).
    """
    files = expand_paths(paths)
    if not files:
        raise DataError("no data files given")
    for i in range(rank, len(files), world):
        try:
            parse_to_cache(files[i], channels, ignore, cache_dir, skip_bad)
        except DataError:
            pass  # every rank meets (and reports) it below; raising here would hang the others
    if barrier is not None:
        barrier()
    logs: list[LogFile] = []
    for p in files:
        stem = parse_to_cache(p, channels, ignore, cache_dir, skip_bad)
        for log in open_stretches(stem, p) if skip_bad else [open_cached(stem, p)]:
            if logs and log.channels != logs[0].channels:
                raise DataError(
                    f"{p}: channels {log.channels} differ from {logs[0].path}'s "
                    f"{logs[0].channels}; pick common ones with --channels"
                )
            logs.append(log)
    return logs
