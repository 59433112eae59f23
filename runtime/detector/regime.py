"""The error scale's jumps to a new regime of errors (the numpy reference; kernel.c
does the same per channel).

The scale's Huber clip (normalise.py) keeps one spike from moving it, and so also keeps
it from following a lasting change in the errors' size. `follow` watches the recent
errors' size, in REGIME_ROWS EWMA rows per channel, and moves the scale at once when a
majority of them say the regime has changed. A frozen scale (`scale_span 0`) never
calls it.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from edgernn.runtime.detector.normalise import CLIP

# A new regime of larger errors: when more than this share of the last REGIME_SPAN
# errors (an EWMA) lie beyond the Huber clip, the error scale takes their size at once;
# each error's log-size counts at most LOG_REGIME_CLIP from the scale.
REGIME_SHARE = 0.5
REGIME_SPAN = 20.0  # fixed, not `span`: a spike and its echo must never be a majority
REGIME_ALPHA = 2.0 / (REGIME_SPAN + 1.0)
LOG_REGIME_CLIP = math.log(1e3)
LOG_ABS_GAUSS = 0.6351814227307392  # -E[log |z|], z standard Gaussian: (gamma + ln 2) / 2
# ... and a lasting regime of smaller errors: once this many flagged samples had most
# recent errors within a third of the scale while the values kept changing (a stuck
# value repeats itself exactly, and must keep alarming), the scale takes their size.
QUIET_HOLD = 100
# The rows: EWMAs of the recent errors' log-size, of the shares of them beyond the clip
# and within a third of the scale, and of the samples repeating the one before exactly;
# the scale before a jump (0: none); flagged quiet samples so far.
REGIME_ROWS = 6


def start_rows(scale: np.ndarray) -> np.ndarray:
    """(REGIME_ROWS, C) for a scale just made: the errors start at the size it says."""
    rows = np.zeros((REGIME_ROWS, len(scale)))
    rows[0] = np.log(np.maximum(scale, 1e-300)) - LOG_ABS_GAUSS
    return rows


def rows_from_state(saved: Optional[np.ndarray], n: int) -> Optional[np.ndarray]:
    """A saved regime state; one saved before the quiet rows were added gets them as 0."""
    if saved is None:  # older states: made when the normalisers pair up
        return None
    if saved.shape == (4, n):  # [log-size, beyond, below, before]
        zero = np.zeros(n)
        saved = np.stack([saved[0], saved[1], saved[2], zero, saved[3], zero])
    if saved.shape != (REGIME_ROWS, n):
        raise ValueError(f"regime of shape {saved.shape}")
    return saved


def follow(
    regime: np.ndarray,
    scale: np.ndarray,
    deviation: np.ndarray,
    repeat: Optional[np.ndarray],
    flagged: bool,
) -> None:
    """Let the error `scale` (C,) jump to a new regime of larger or smaller errors, in
    place, and update the `regime` rows (REGIME_ROWS, C) with this sample's `deviation`
    (the normalisers' (2, 2, C): deviations, then their bounds, each for the forecast
    error and the level; the error's row is used), `repeat` (C,) (whether each value equals
    the one before; None: unknown) and whether it was `flagged`. kernel.c does the same.

    The scale's Huber clip bounds what one error can do to it (at most 3 scales'
    worth), so that a spike barely registers; but it also bounds how fast the scale
    can grow, about 0.7 % a sample while flagged: a stream whose errors become 10x
    larger for good (a machine starting up, a busier service) stayed in alarm for
    hundreds of samples, and the 10^7 x of a stream idle while it was trained for
    about 900. When more than half of the last 20 errors lie beyond the clip,
    no one sample is to blame: the scale takes their size (their geometric mean,
    in Gaussian sd units) at once. One spike, or a shift the forecaster follows
    within a few samples, never makes a majority.

    A jump is provisional: once more than half of the last 20 errors lie within a
    third of the scale, it goes back towards the scale it had before the jump (to
    the recent size, never below the old scale), so the ordinary noise after a
    passing burst is not a 'stuck' alarm.

    Errors that become smaller for good (a quieter machine, a service past its busy
    season) alarm through the stuck-value statistic, and the slow tracker, at a
    quarter rate while flagged, took 270-730 samples to absorb errors 10x smaller
    and 1,000-2,000 for 100x. The scale takes their size once QUIET_HOLD flagged
    samples had most recent errors within a third of it (the count ends when fewer
    than a quarter are), so a drop in the noise is an alert, not a day of them. Not
    while the values repeat themselves (most of the last 20 equal to the one
    before): a stuck value keeps alarming. Errors over 10x smaller meet the floor
    (a tenth of the mean sample-to-sample change, over the tails' memory) and are
    absorbed only as it follows."""
    d, bound = deviation[0][0], deviation[1][0]
    size = np.abs(d)
    step = np.empty((4, len(scale)))  # the EWMA rows' new values, then their steps
    step[1] = size > CLIP * bound
    step[2] = size * CLIP < bound
    step[3] = regime[3] if repeat is None else repeat
    np.maximum(size, 1e-300, out=size)
    np.log(size, out=size)
    ref = np.log(bound)
    np.clip(size, ref - LOG_REGIME_CLIP, ref + LOG_REGIME_CLIP, out=step[0])
    step -= regime[:4]
    step *= REGIME_ALPHA
    regime[:4] += step
    logsize, beyond, below, repeats, before, quiet_for = regime
    up = beyond > REGIME_SHARE
    counting = flagged or quiet_for.any()
    if not (up.any() or before.any() or counting):
        return  # nothing can move (the usual sample)
    recent = np.exp(logsize + LOG_ABS_GAUSS)
    up &= recent > bound
    if up.any():
        before[up & (before <= 0)] = scale[up & (before <= 0)]
        scale[up] = recent[up]
    back = (before > 0) & (below > REGIME_SHARE)
    if back.any():
        scale[back] = np.maximum(recent[back], before[back])
    before[(before > 0) & (scale <= before)] = 0.0
    if not counting:
        return
    # the count ends when clearly not quiet (the share within a third dips under a
    # half now and then in a regime only 3x quieter)
    quiet_for[(below < 0.5 * REGIME_SHARE) | (repeats > REGIME_SHARE) | (before > 0)] = 0.0
    if flagged:
        quiet_for[(below > REGIME_SHARE) & (repeats <= REGIME_SHARE) & (before <= 0)] += 1.0
        down = quiet_for >= QUIET_HOLD
        if down.any():
            scale[down] = np.minimum(scale[down], recent[down])
            quiet_for[down] = 0.0
