"""Everything this package takes from diffrax beyond its public API, in one place.

Knows diffrax 0.7.0, 0.7.1 and 0.7.2 (`OLDEST` to `NEWEST`), and is the only module
that depends on which of them is installed. A new diffrax release that moves or
changes any of these names should only need this module changed.

- `is_sde`, `is_unsafe_sde`: whether terms are those of an SDE, and whether they use
  an `UnsafeBrownianPath` (refused).
- `SaveState`: the type of diffrax's per-`SubSaveAt` save buffers in the loop state.
- `save_y`: the default `SubSaveAt(fn=...)`.
- `save_every`: every how many accepted steps a `SubSaveAt(steps=...)` saves.
- `WrapTerm`: diffrax wraps each term in it to integrate backwards in time.
- `AbstractWrappedSolver`: the base of solvers wrapping another (`ReportingSolver`).
- `clip_to_end`, `clip_floor`: the clip of `tnext` to `t1` that diffrax's loop applies
  after every call of the step size controller, reproduced exactly.

What differs between the versions, for this package:

- `SubSaveAt.steps`: a bool in 0.7.0 (any true value saves every accepted step); from
  0.7.1 an int `n`, to save every `n`-th accepted step (`True` is `1`). The backward
  pass reads diffrax's save buffers (`_save_layout.py`), so it must know which.
- The clip of `tnext` to `t1`: 0.7.0 rounds `tnext` to `t1` above `t1 - 1e-10`
  (float64 times) or `t1 - 1e-6` (others), and its `_clip_to_end` takes no threshold;
  from 0.7.1 the threshold is `t1` less 100 ULPs, computed once before the loop and
  passed in (`t1_clip_floor`). The step record must reproduce the loop's clip bit for
  bit (`_step_record.py`).
- Not relied on, but worth knowing: 0.7.0's `ConstantStepSize` adds `dt0` step after
  step, later versions take fractions of `t1 - t0` (the step record runs the user's
  controller itself, so either is recorded and replayed as it is); with `t0 == t1`
  and `SaveAt(ts=...)`, 0.7.0 fills the whole buffer with `fn(t0, y0, args)`, later
  versions save `y0` at `t0` and then the same values (the same slots either way);
  0.7.0 supports Python 3.10, later versions need 3.11.

`check_version` refuses a diffrax older than `OLDEST` at import, and warns for one
newer than `NEWEST`. `check_events_supported` refuses events before `EVENTS_SINCE`
(0.7.2), the release `ReversibleAdjoint`'s event handling is tested against.
"""

import warnings

import diffrax
import equinox.internal as eqxi
import jax.lax as lax
import jax.numpy as jnp
from diffrax._heuristics import is_sde, is_unsafe_sde
from diffrax._integrate import SaveState, _clip_to_end
from diffrax._saveat import save_y
from diffrax._solver.base import AbstractWrappedSolver
from diffrax._term import WrapTerm

__all__ = [
    "AbstractWrappedSolver",
    "SaveState",
    "WrapTerm",
    "check_events_supported",
    "clip_floor",
    "clip_to_end",
    "is_sde",
    "is_unsafe_sde",
    "save_every",
    "save_y",
]

# The diffrax releases this module knows, and the test suite runs against.
OLDEST = (0, 7, 0)
NEWEST = (0, 7, 2)
# From this release: `SubSaveAt(steps=n)` is an int, and the clip to `t1` is 100 ULPs.
_INT_STEPS_AND_ULP_CLIP = (0, 7, 1)
# Events rely on how diffrax's `loop` ends (`_event.py`), checked against this release
# and those after it; with diffrax 0.7.0 (and jax 0.4.38) differentiating what follows
# the loop fails.
EVENTS_SINCE = (0, 7, 2)


def release(version: str) -> tuple[int, ...]:
    """`"0.7.2"` (or `"0.7.2.post1"`, `"0.7.3rc1"`...) as `(0, 7, 2)`."""
    parts = []
    for part in version.split(".")[:3]:
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
    return (*parts, 0, 0, 0)[:3]


def _name(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def check_version(version: str):
    """Refuses a diffrax older than `OLDEST` (its loop and save layout are not known
    here, and gradients could be wrong); warns for one newer than `NEWEST`."""
    installed = release(version)
    tested = f"{_name(OLDEST)} to {_name(NEWEST)}"
    if installed < OLDEST:
        raise ImportError(
            f"`reversible_adjoint` needs diffrax {tested}, but diffrax {version} is "
            "installed: older versions lay out their saved values differently, and "
            f'gradients would be wrong: `pip install "diffrax>={_name(OLDEST)},<0.8"`.'
        )
    if installed > NEWEST:
        warnings.warn(
            f"`reversible_adjoint` is tested with diffrax {tested}, and diffrax "
            f"{version} is installed: check your gradients against "
            "`diffrax.RecursiveCheckpointAdjoint` once.",
            stacklevel=2,
        )


check_version(diffrax.__version__)
_RELEASE = release(diffrax.__version__)


def check_events_supported():
    """Refuses events, at trace time, with a diffrax older than `EVENTS_SINCE`."""
    if _RELEASE < EVENTS_SINCE:
        raise NotImplementedError(
            "`adjoint=ReversibleAdjoint()` supports events with diffrax "
            f"{_name(EVENTS_SINCE)} and later, but diffrax {diffrax.__version__} is "
            f'installed: `pip install "diffrax>={_name(EVENTS_SINCE)},<0.8"`, or use '
            "`adjoint=diffrax.RecursiveCheckpointAdjoint()`."
        )


def save_every(sub) -> int:
    """Every how many accepted steps `sub` (a `diffrax.SubSaveAt`) saves the step's end:
    `0` for never. diffrax 0.7.0 saves every step for any true `steps`."""
    if _RELEASE < _INT_STEPS_AND_ULP_CLIP:
        return 1 if sub.steps else 0
    return int(sub.steps)


def clip_floor(t1):
    """The threshold above which diffrax's loop rounds `tnext` to `t1`, computed as the
    loop computes it: `t1` less 100 ULPs (before 0.7.1: `t1` less a fixed tolerance,
    which `clip_to_end` applies itself). The same 100 steps down as diffrax's, in a
    loop traced once rather than 100 times."""
    if _RELEASE < _INT_STEPS_AND_ULP_CLIP:
        tol = 1e-10 if jnp.result_type(t1) == jnp.dtype("float64") else 1e-6
        return t1 - tol
    return lax.fori_loop(0, 100, lambda _, floor: eqxi.prevbefore(floor), t1)


def clip_to_end(tprev, tnext, t1, t1_clip_floor, keep_step):
    """The clip of `tnext` to `t1` diffrax's loop applies after each controller call
    (diffrax's own function); `t1_clip_floor` is `clip_floor(t1)`."""
    if _RELEASE < _INT_STEPS_AND_ULP_CLIP:
        del t1_clip_floor
        return _clip_to_end(tprev, tnext, t1, keep_step)  # pyright: ignore  # 0.7.0's
    return _clip_to_end(tprev, tnext, t1, t1_clip_floor, keep_step)
