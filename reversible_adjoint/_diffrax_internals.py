"""Everything this package takes from diffrax beyond its public API, in one place.

Written against diffrax 0.7.2, the version `pyproject.toml` pins. A new diffrax release
that moves or changes any of these names should only need this module changed.

- `is_sde`, `is_unsafe_sde`: whether terms are those of an SDE, and whether they use
  an `UnsafeBrownianPath` (refused).
- `SaveState`: the type of diffrax's per-`SubSaveAt` save buffers in the loop state.
- `save_y`: the default `SubSaveAt(fn=...)`.
- `WrapTerm`: diffrax wraps each term in it to integrate backwards in time.
- `AbstractWrappedSolver`: the base of solvers wrapping another (`ReportingSolver`).
- `clip_to_end`, `clip_floor`: the clip of `tnext` to `t1` that diffrax's loop applies
  after every call of the step size controller, reproduced exactly.

Older versions differ: 0.7.0 clips `tnext` to `t1` with a fixed tolerance (and
`_clip_to_end` takes no `t1_clip_floor`), and saves `SaveAt(steps=...)` differently,
so that the backward pass, which reads diffrax's save buffers (`_save_layout.py`),
would get wrong gradients. `check_version` refuses anything older than 0.7.2 at
import.
"""

import warnings

import diffrax
import equinox.internal as eqxi
from diffrax._heuristics import is_sde, is_unsafe_sde
from diffrax._integrate import SaveState, _clip_to_end
from diffrax._saveat import save_y
from diffrax._solver.base import AbstractWrappedSolver
from diffrax._term import WrapTerm

__all__ = [
    "AbstractWrappedSolver",
    "SaveState",
    "WrapTerm",
    "clip_floor",
    "clip_to_end",
    "is_sde",
    "is_unsafe_sde",
    "save_y",
]

TESTED = (0, 7, 2)


def check_version(version: str):
    """Refuses a diffrax older than the tested version (its save layout differs, and
    gradients would be wrong); warns for a newer one."""
    release = tuple(int(part) for part in version.split(".")[:3] if part.isdigit())
    tested = ".".join(map(str, TESTED))
    if release < TESTED:
        raise ImportError(
            f"`reversible_adjoint` needs diffrax {tested}, but diffrax {version} is "
            "installed: older versions lay out `SaveAt(steps=...)` differently, and "
            f"gradients would be wrong: `pip install diffrax=={tested}`."
        )
    if release > TESTED:
        warnings.warn(
            f"`reversible_adjoint` is tested with diffrax {tested}, and diffrax "
            f"{version} is installed: check your gradients against "
            "`diffrax.RecursiveCheckpointAdjoint` once.",
            stacklevel=2,
        )


check_version(diffrax.__version__)


def clip_floor(t1):
    """`t1` less 100 ULPs: the threshold above which diffrax's loop rounds `tnext` to
    `t1` (the same computation as the loop's)."""
    floor = t1
    for _ in range(100):
        floor = eqxi.prevbefore(floor)
    return floor


def clip_to_end(tprev, tnext, t1, t1_clip_floor, keep_step):
    """The clip of `tnext` to `t1` diffrax's loop applies after each controller call;
    `t1_clip_floor` is `clip_floor(t1)`."""
    return _clip_to_end(tprev, tnext, t1, t1_clip_floor, keep_step)
