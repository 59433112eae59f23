"""Online learning of a forecaster's readout where streams drift (numpy only; runs on the Pi).

A trained forecaster's head is a linear map from its last layer's h to the forecast.
When a stream drifts (a sensor ages, a server's load grows), the recurrent features
still describe the dynamics but the map from them to the next value goes stale.
`OnlineHead` keeps a correction of that map up to date on the device by exponentially
forgetting least squares (recursive least squares, solved per block):

    forecast'(t) = forecast(t) + std * (A^T [h_t; 1])        A: (hidden + 1, C)

fitted to the trained forecast's normalised residual (x(t + horizon) - forecast(t)) / std,
with a ridge prior holding A at 0 (the trained head) until the stream shows otherwise.
Samples the detector flags are learnt with weight 0: a fault must not become normal.

A is re-solved at every `block`-th forecast, counted from the stream's first sample,
from the samples that arrived before it: the forecasts made at t in [kB, (k+1)B) use
A_k, fitted on the samples before kB. So a CSV processed in chunks (correct() a block,
score it, learn() it), a live stream sample by sample, and a run resumed from a saved
state see the same A at the same sample and make the same forecasts. A block costs one
(hidden+1)^2 solve: a fraction of a microsecond per sample.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from edgernn.errors import InputError

BLOCK = 64  # forecasts between solves (a solve is the costly part: ~1 per 64 samples)
MEMORY = 2000.0  # samples the fit remembers (forgetting factor 1 - 1/MEMORY)
RIDGE = 100.0  # prior weight on A = 0, in samples' worth of unit-size features


def head_rows_reference(phi: np.ndarray, A: np.ndarray) -> np.ndarray:
    """What the compiled head_rows (runtime/detector/kernel.c) computes, in numpy:
    phi (n, d) @ A (d, C) with each sum taken in the order j = 0..d-1 and every product
    rounded before it is added, so a row gets the same bits alone as in a block."""
    out = phi[:, :1] * A[0]
    for j in range(1, len(A)):
        out += phi[:, j : j + 1] * A[j]
    return out


@functools.lru_cache(maxsize=1)
def _head_library():
    """The detector's compiled kernel library where it builds and its head_rows gives
    head_rows_reference's bits on a probe; else None (OnlineHead's products in numpy).
    EDGERNN_DETECTOR_BACKEND=numpy: None."""
    if os.environ.get("EDGERNN_DETECTOR_BACKEND") == "numpy":
        return None
    from edgernn.runtime.cstep import CStepUnavailable
    from edgernn.runtime.detector import ckernel

    try:
        lib = ckernel.load_library()
    except (CStepUnavailable, OSError):
        return None
    rng = np.random.default_rng(3)  # sizes and magnitudes where rounding orders differ
    phi = rng.standard_normal((5, 33)) * np.exp(rng.uniform(-8, 8, (5, 33)))
    A = rng.standard_normal((33, 7)) * np.exp(rng.uniform(-8, 8, (33, 7)))
    got = np.empty((5, 7))
    lib.edgernn_head_rows(phi.ctypes.data, A.ctypes.data, 5, 33, 7, got.ctypes.data)
    return lib if np.array_equal(got, head_rows_reference(phi, A)) else None


def learn_weight(record) -> float:
    """The weight the head learns a sample with, from the detector's record of it: 0 when
    flagged, else 1 (also without a verdict: warm-up, no detector). Skipping also the
    samples that score just under the threshold was tried and not kept: no better on
    validation, and it delays taking up a lasting change of regime (README)."""
    return 0.0 if record and record.get("anomaly") else 1.0


def learn_weights(anomaly) -> np.ndarray:
    """learn_weight() of a block's verdicts from its anomaly flags (N,)."""
    return np.where(np.asarray(anomaly, dtype=bool), 0.0, 1.0)


class OnlineHead:
    """A forecaster's head, corrected online (module docstring).

    hidden, channels: the forecaster's sizes; std (C,): its normalisation; horizon: the
    steps ahead of its forecasts (a forecast made at t is learnt when sample t + horizon
    arrives). Per sample, in this order:

    >>> head = OnlineHead.for_model(model)
    >>> head.learn(x[None], weights=[0.0 if flagged else 1.0])   # sample t arrived
    >>> f = head.correct(stream.step(x)[None], stream.features()[None])[0]  # forecast t
    """

    def __init__(
        self,
        hidden: int,
        channels: int,
        std,
        horizon: int = 1,
        memory: float = MEMORY,
        ridge: float = RIDGE,
        block: int = BLOCK,
    ):
        if min(hidden, channels, horizon, block) < 1:
            raise InputError("online head: hidden, channels, horizon and block must be >= 1")
        if not (memory > 1 and ridge > 0):
            raise InputError("online head: memory must be > 1 sample and ridge > 0")
        self.hidden, self.channels, self.horizon = int(hidden), int(channels), int(horizon)
        self.memory, self.ridge, self.block = float(memory), float(ridge), int(block)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        if self.std.shape != (self.channels,) or not (self.std > 0).all():
            raise InputError(f"online head: std must be {self.channels} positive values")
        self.reset()

    @classmethod
    def for_model(cls, model, **options) -> OnlineHead:
        """For a plain forecaster (a runtime.Model that has a head)."""
        meta = model.meta
        if model.generic or meta.norm_std is None:
            raise InputError(f"{model.path}: an online head needs a plain forecaster")
        return cls(meta.hidden, meta.n_channels, meta.norm_std, model.horizon, **options)

    def reset(self) -> None:
        d, c = self.hidden + 1, self.channels
        self._live = False  # step()'s buffers below hold the pending forecasts and pairs
        self.A = np.zeros((d, c))  # (H+1, C): the correction, normalised units
        self._block_phi = np.ones((self.block, d))  # this block's features [h, 1] by row
        self._phi_address = self._block_phi.ctypes.data  # (_product's)
        self._out = np.empty((self.block, c))
        self._out_address = self._out.ctypes.data
        self._A_seen, self._A_address = None, 0
        self._prior = self.ridge * np.eye(d)
        self._gram = np.zeros((d, d))  # forgetting sum of w phi phi^T ...
        self._cross = np.zeros((d, c))  # ... and of w phi r^T, up to the last solve
        self.made = 0  # forecasts corrected so far (the block clock)
        self.seen = 0  # samples learnt so far
        self._solved_at = -1  # the `made` of the last solve (solve_ahead: done before its sample)
        # forecasts not yet learnt, oldest first: features [H+1] and trained forecast [C]
        self._phi = np.zeros((0, d))
        self._base = np.zeros((0, c))
        # learnt since the last solve: features, residuals, weights, the sample index
        self._pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        # step()'s own storage (the live path, one sample a call): the forecasts made as
        # rows of a queue, features and trained forecast, rows _qlo.._qhi-1 pending, the
        # rows before _qlo learnt since the queue started (their samples in the same rows
        # of _qx, their weights and indices in the lists _qw, _qidx); _settle() turns
        # them back into _phi / _base / _pairs
        self._queue(self.horizon + self.block + 1)

    def _queue(self, cap: int) -> None:
        d, c = self.hidden + 1, self.channels
        self._qphi, self._qbase, self._qx = np.empty((cap, d)), np.empty((cap, c)), np.empty((cap, c))
        self._qw, self._qidx = np.empty(cap), np.empty(cap, dtype=np.int64)
        self._qlo = self._qhi = 0

    # _phi, _base and _pairs as every method but step() sees them (step()'s buffers
    # settled into them first)
    @property
    def _phi(self) -> np.ndarray:
        self._settle()
        return self._phi_

    @_phi.setter
    def _phi(self, v: np.ndarray) -> None:
        self._settle()
        self._phi_ = v

    @property
    def _base(self) -> np.ndarray:
        self._settle()
        return self._base_

    @_base.setter
    def _base(self, v: np.ndarray) -> None:
        self._settle()
        self._base_ = v

    @property
    def _pairs(self) -> list:
        self._settle()
        return self._pairs_

    @_pairs.setter
    def _pairs(self, v: list) -> None:
        self._settle()
        self._pairs_ = v

    def _settle(self) -> None:
        """step()'s queue -> _phi / _base (the pending forecasts) and one more entry of
        _pairs (the pairs step() learnt, in order): the same values as learn() / correct()
        would have kept (the residuals made here for all rows at once: the same
        elementwise arithmetic as learn()'s)."""
        if not self._live:
            return
        self._live = False
        lo, hi = self._qlo, self._qhi
        self._phi_, self._base_ = self._qphi[lo:hi].copy(), self._qbase[lo:hi].copy()
        if lo:
            r = self._qx[:lo] - self._qbase[:lo]
            r /= self.std
            w, index = self._qw[:lo].copy(), self._qidx[:lo].copy()
            self._pairs_.append((self._qphi[:lo].copy(), r, w, index))
        self._qlo = self._qhi = 0

    def _go_live(self) -> None:
        """_phi / _base into step()'s queue, from its first row."""
        phi, base = self._phi_, self._base_
        m = len(phi)
        if m + self.block + 1 > len(self._qphi):
            self._queue(m + self.block + 1)
        self._qphi[:m], self._qbase[:m] = phi, base
        self._qlo, self._qhi = 0, m
        self._live = True

    def live_buffers(self) -> tuple:
        """step()'s buffers, step() ready to run, for runtime/livescore.py, which steps
        the head in C between solves on them and on the counters seen, made, _qlo and
        _qhi: (A, block_phi, qphi, qbase, qx, qw, qidx)."""
        if not self._live:
            self._go_live()
        return (self.A, self._block_phi, self._qphi, self._qbase, self._qx, self._qw,
                self._qidx)  # fmt: skip

    # -- the two halves of a step, for one sample or a block --------------------------
    @property
    def room(self) -> int:
        """Forecasts correct() can take before the next solve (1..block): a chunk is
        corrected, scored and learnt in pieces of at most this many samples."""
        return self.block - self.made % self.block

    def correct(self, Y, H) -> np.ndarray:
        """Corrected forecasts (n, C) for trained forecasts Y (n, C) made now from
        features H (n, hidden), the stream's next n forecasts (n <= room)."""
        Y = np.asarray(Y, dtype=np.float64)
        H = np.asarray(H, dtype=np.float64)
        n = len(Y)
        if Y.shape != (n, self.channels) or H.shape != (n, self.hidden):
            raise InputError(
                f"online head: forecasts {Y.shape} / features {H.shape} do not match "
                f"({self.channels} channels, {self.hidden} hidden)"
            )
        if n > self.room:
            raise InputError(f"online head: {n} forecasts at once, room for {self.room}")
        if self._solve_due(self.made) and n:
            self._solve(self.made)
        rows = slice(self.made % self.block, self.made % self.block + n)
        self._block_phi[rows, :-1] = H
        correction = self._correction(rows)
        self.made += n
        self._phi = np.concatenate([self._phi, self._block_phi[rows]])
        self._base = np.concatenate([self._base, Y])
        return Y + self.std * correction

    def _correction(self, rows: slice) -> np.ndarray:
        """A^T phi for the block's `rows` (n, C)."""
        return self._product(rows.start, rows.stop - rows.start)

    def _product(self, lo: int, n: int) -> np.ndarray:
        """A^T phi for the block's rows lo..lo+n-1, each forecast's features at its own
        row, so that a forecast corrected alone (live) or in a piece of a chunk gets the
        same bits: the compiled kernel's head_rows (a fixed order of sums, per row) where
        it loads, else numpy's product of the whole block (a BLAS product rounds by
        shape, so every row meets the same call)."""
        lib, A, phi = _head_library(), self.A, self._block_phi
        if lib is None:
            return (phi @ A)[lo : lo + n]
        if A is not self._A_seen:  # a new solve: look its address up once
            self._A_seen, self._A_kept = A, np.ascontiguousarray(A)
            self._A_address = self._A_kept.ctypes.data
        d, c = A.shape
        out = self._out[:n]
        lib.edgernn_head_rows(self._phi_address + 8 * d * lo, self._A_address, n, d, c,
                              self._out_address)  # fmt: skip
        return out.copy()

    def learn(self, X, weights=None) -> None:
        """Samples X (n, C) arrived (the next n of the stream): learn the forecasts made
        for them, each with its weight (default 1; 0 for a sample the detector flags)."""
        X = np.asarray(X, dtype=np.float64)
        n = len(X)
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        if X.shape != (n, self.channels) or w.shape != (n,):
            raise InputError(f"online head: samples {X.shape} / weights {w.shape} do not match")
        first = self.seen - self.horizon  # index of the forecast due for X[0]
        skip = max(0, -first)  # the first `horizon` samples have no forecast
        due = n - skip
        if due > len(self._base):
            raise InputError("online head: learn() got samples whose forecasts were not made")
        if due > 0:
            r = (X[skip:] - self._base[:due]) / self.std
            index = self.seen + skip + np.arange(due)
            self._pairs.append((self._phi[:due], r, w[skip:], index))
            self._phi, self._base = self._phi[due:], self._base[due:]
        self.seen += n

    def step(self, x, forecast, h, weight: float = 1.0) -> np.ndarray:
        """One sample of the live path: learn([x], [weight]), then correct([forecast],
        [h])[0], the forecast made from x; the same numbers in fewer operations (the
        pending forecasts and the pairs learnt kept in preallocated buffers, _settle()).
        x, forecast (C,), h (hidden,); no shape checks (Monitor's arrays are right)."""
        if not self._live:
            self._go_live()
        seen = self.seen
        if seen >= self.horizon:
            lo = self._qlo  # the forecast due now: learnt from x (its residual: _settle)
            if lo == self._qhi:
                raise InputError("online head: learn() got samples whose forecasts were not made")
            self._qx[lo] = x
            self._qw[lo] = weight
            self._qidx[lo] = seen
            self._qlo = lo + 1
        self.seen = seen + 1
        made = self.made
        at = made % self.block
        if at == 0 and self._solve_due(made):
            self._solve(made)  # (settles the buffers)
            self._go_live()
        block_phi = self._block_phi
        block_phi[at, :-1] = h
        correction = self._product(at, 1)[0]  # as correct()
        hi = self._qhi
        if hi == len(self._qbase):  # (a solve settles the queue at least once a block)
            self._settle()
            self._go_live()
            hi = self._qhi
        self._qphi[hi] = block_phi[at]
        base = self._qbase[hi]
        base[...] = forecast
        self._qhi = hi + 1
        self.made = made + 1
        correction *= self.std
        correction += base  # base + std * correction, as correct()
        return correction

    def run_chunk(self, Y, H, X, weigh) -> None:
        """correct() then learn() over the stream's next n forecasts and samples, in the
        pieces a CSV chunk is scored in (each ends where the head re-solves): for each
        piece [a, b), Y[a:b] corrected in place, then weigh(a, b) gives the weights (b - a,)
        its samples X[a:b] are learnt with (the detector scores the piece in between).
        The same arithmetic as correct() / learn() piece by piece, so the same bits; the
        features and residuals are made once for the chunk, not per piece. Y (n, C) the
        trained forecasts (float32: written back rounded, as an assignment does), H (n,
        hidden) their features, X (n, C) the samples."""
        n, s = len(Y), self.seen
        if not n or s != self.made or len(self._phi) != min(s, self.horizon):
            return self._run_pieces(Y, H, X, weigh)
        m = len(self._phi)  # forecasts made before the chunk and not yet learnt
        phi = np.ones((m + n, self.hidden + 1))
        phi[:m] = self._phi
        phi[m:, :-1] = H
        base = np.concatenate([self._base, np.asarray(Y, dtype=np.float64)])
        blind = max(0, min(n, self.horizon - s))  # the stream's first samples: no forecast
        learnt = n - blind  # phi[j] is learnt from X[blind + j]
        r = (np.asarray(X, dtype=np.float64)[blind:] - base[:learnt]) / self.std
        w = np.ones(n)
        index = s + blind + np.arange(learnt)
        finite = np.isfinite(r).all(axis=1) & np.isfinite(phi[:learnt]).all(axis=1)
        carried, j0 = self._pairs, 0  # learnt since the last solve: carried + phi[j0:j]
        a = 0
        while a < n:
            t = s + a
            at = t % self.block
            b = a + min(self.block - at, n - a)
            if at == 0 and self._solve_due(t):
                j = max(0, a - blind)
                self._pairs = carried + self._chunk_pair(phi, r, w, index, blind, j0, j)
                self._solve(t, None if carried else finite[j0:j])
                carried, j0 = self._pairs, j
            self._block_phi[at : at + b - a] = phi[m + a : m + b]  # [h, 1], as correct()
            correction = self._correction(slice(at, at + b - a))
            Y[a:b] = base[m + a : m + b] + self.std * correction
            w[a:b] = weigh(a, b)
            a = b
        self._pairs = carried + self._chunk_pair(phi, r, w, index, blind, j0, learnt)
        self._phi, self._base = phi[learnt:].copy(), base[learnt:].copy()
        self.made = self.seen = s + n

    @staticmethod
    def _chunk_pair(phi, r, w, index, blind: int, lo: int, hi: int) -> list:
        """run_chunk's learnt pairs lo..hi-1 as learn() keeps them (phi[j]'s sample is
        X[blind + j], its weight w[blind + j])."""
        if hi <= lo:
            return []
        return [(phi[lo:hi], r[lo:hi], w[blind + lo : blind + hi], index[lo:hi])]

    def _run_pieces(self, Y, H, X, weigh) -> None:
        """run_chunk() through correct() / learn() (a head whose samples lag its forecasts)."""
        a = 0
        while a < len(Y):
            b = a + min(self.room, len(Y) - a)
            Y[a:b] = self.correct(Y[a:b], H[a:b])
            self.learn(X[a:b], weigh(a, b))
            a = b

    def _solve_due(self, made: int) -> bool:
        """Whether the forecast numbered `made` needs a solve first (it starts a block,
        and solve_ahead() has not done it)."""
        return made > 0 and made % self.block == 0 and made != self._solved_at

    def solve_ahead(self) -> None:
        """The solve the next forecast needs, now, where it is due (the live loop calls
        it in the idle time after a sample, not when the next one comes). A solve uses
        the samples before its block (the pairs indexed below `made`), all learnt by
        now: the same A, Gram and cross sums as step() makes at the next sample."""
        if self._solve_due(self.made):
            self._solve(self.made)
            self._go_live()

    def _solve(self, limit: int, finite=None) -> None:
        """A from the samples before `limit`; later ones wait for the next solve.
        finite: (run_chunk) whether each pair's residual and features are finite, where
        they are one piece of the chunk's arrays, made once for the chunk."""
        keep = (1.0 - 1.0 / self.memory) ** self.block
        self._gram *= keep
        self._cross *= keep
        if self._pairs:
            if len(self._pairs) == 1:  # (run_chunk: a block's pairs in one piece)
                phi, r, w, index = self._pairs[0]
            else:
                phi, r, w, index = (np.concatenate(p) for p in zip(*self._pairs))
            later = None
            if index[-1] < limit:  # all of them (the CSV path): no copies
                phi_now, r_now, w_now = phi, r, w
            else:
                now = index < limit
                phi_now, r_now, w_now, later, finite = phi[now], r[now], w[now], ~now, None
            self._accumulate(phi_now, r_now, w_now, finite)
            if later is not None and later.any():
                self._pairs = [(phi[later], r[later], w[later], index[later])]
            else:
                self._pairs = []
        system = self._gram + self._prior
        self.A = np.ascontiguousarray(np.linalg.solve(system, self._cross))
        self._solved_at = limit

    def _accumulate(self, phi, r, w, finite=None) -> None:
        """The Gram and cross sums += the pairs' w phi phi^T and w phi r^T."""
        # a sample not learnt adds exactly nothing, even where a huge input made its
        # residual or features inf (0 x inf would be NaN and spoil A for good)
        if finite is None:
            finite = np.isfinite(r).all(axis=1) & np.isfinite(phi).all(axis=1)
        skip = (w == 0) | ~finite
        if skip.any():
            w = np.where(skip, 0.0, w)
            phi = np.where(skip[:, None], 0.0, phi)
            r = np.where(skip[:, None], 0.0, r)
        wphi = phi * w[:, None]
        self._gram += wphi.T @ phi
        self._cross += wphi.T @ r

    # -- state -----------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return {
            "hidden": self.hidden, "channels": self.channels, "horizon": self.horizon,
            "memory": self.memory, "ridge": self.ridge, "block": self.block,
        }  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly, JSON-able."""
        pairs = [np.concatenate(p) for p in zip(*self._pairs)] if self._pairs else None
        return {
            "settings": self.settings(),
            "A": self.A.tolist(), "gram": self._gram.tolist(), "cross": self._cross.tolist(),
            "made": self.made, "seen": self.seen,
            "solved": self._solved_at == self.made > 0,  # (solve_ahead: its block's A is in)
            "phi": self._phi.tolist(), "base": self._base.tolist(),
            "pairs": None if pairs is None else [p.tolist() for p in pairs],
        }  # fmt: skip

    def load_state_dict(self, d: dict[str, Any]) -> None:
        try:
            if d["settings"] != self.settings():
                raise InputError("saved online head was made for another model or settings")
            d1, c = self.hidden + 1, self.channels
            A = _matrix(d["A"], (d1, c))
            gram, cross = _matrix(d["gram"], (d1, d1)), _matrix(d["cross"], (d1, c))
            phi = _matrix(d["phi"], (-1, d1))
            base = _matrix(d["base"], (len(phi), c))
            pairs = []
            if d["pairs"] is not None:
                p_phi = _matrix(d["pairs"][0], (-1, d1))
                k = len(p_phi)
                pairs = [(
                    p_phi, _matrix(d["pairs"][1], (k, c)), _matrix(d["pairs"][2], (k,)),
                    np.asarray(d["pairs"][3], dtype=np.int64).reshape(k),
                )]  # fmt: skip
            made, seen = int(d["made"]), int(d["seen"])
            solved = d.get("solved", False)  # (absent from files written before it)
            if not isinstance(solved, bool):
                raise TypeError(f"solved: {solved!r}")
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise InputError(f"damaged online head state ({e!r})") from None
        self.A, self._gram, self._cross = A, gram, cross
        self._phi, self._base, self._pairs = phi, base, pairs
        self.made, self.seen = made, seen
        self._solved_at = made if solved else -1


def _matrix(v, shape: tuple) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64)
    if len(shape) == 2 and shape[0] == -1 and arr.size == 0:
        arr = arr.reshape(0, shape[1])
    want = tuple(arr.shape[0] if s == -1 else s for s in shape)
    if arr.shape != want or not np.isfinite(arr).all():
        raise ValueError(f"shape {arr.shape}, expected {want}")
    return arr


def online_head_wanted(args, detector) -> bool:
    """The command line's choice: the online head runs with the detector (an object or
    a factory), unless --no-online-head."""
    return detector is not None and not getattr(args, "no_online_head", False)
