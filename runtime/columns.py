"""The flat output columns of a graph that is not a forecaster (`edgernn run`).

Per named output: `<output>` for a single value; `<output>_<column>` when the metadata
names the last axis, else `<output>_<i>` (flattened) for vectors. The primary output of a
classifier becomes `p_<class>` per class and `label` (the most probable class); of a
regressor, `<target>_pred` per target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edgernn.errors import ModelFormatError
from edgernn.runtime.metadata import ModelMeta, concrete


class OutputColumns:
    def __init__(self, meta: ModelMeta, taken: Sequence[str] = ()):
        """taken: the names already used (input channels, time column); an output
        column that would repeat one gets an `out_` prefix."""
        self.meta = meta
        self._plan: list[tuple[str, list[str], str]] = []  # (output, columns, kind)
        used = set(taken)
        for o in meta.outputs:
            size = int(np.prod(concrete(o.shape, None), dtype=np.int64))
            kind = "values"
            if o.name == meta.output and meta.task == "classify":
                cols, kind = [f"p_{c}" for c in meta.classes or ()] + ["label"], "classify"
            elif o.name == meta.output and meta.task == "regress":
                cols = [f"{t}_pred" for t in meta.targets or ()]
            elif size == 1:
                cols = [o.name]
            elif o.columns is not None and len(o.columns) == size:
                cols = [f"{o.name}_{c}" for c in o.columns]
            else:
                cols = [f"{o.name}_{i}" for i in range(size)]
            want = size + (1 if kind == "classify" else 0)
            if len(cols) != want:
                raise ModelFormatError(
                    f"{meta.output!r}: {len(cols)} column names for {size} values of {o.name!r}"
                )
            cols = [c if c not in used else f"out_{c}" for c in cols]
            used.update(cols)
            self._plan.append((o.name, cols, kind))
        self.names: list[str] = [c for _, cols, _ in self._plan for c in cols]
        if len(set(self.names)) != len(self.names):
            raise ModelFormatError(f"output columns repeat a name: {self.names}")

    def values(self, outputs: Mapping[str, np.ndarray]) -> dict:
        """Column -> value for one step's outputs (as Stream.outputs holds them)."""
        row: dict = {}
        for name, cols, kind in self._plan:
            flat = np.asarray(outputs[name]).reshape(-1)
            if kind == "classify":
                row.update(zip(cols[:-1], flat.tolist()))
                row[cols[-1]] = self.meta.classes[int(np.argmax(flat))]  # type: ignore[index]
            else:
                row.update(zip(cols, flat.tolist()))
        return row
