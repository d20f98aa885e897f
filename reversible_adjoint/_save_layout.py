"""Where diffrax's loop writes each saved value in a `SubSaveAt`'s buffer.

Each `SubSaveAt` owns one buffer (diffrax 0.7), filled in order:

1. the value at `t0`, if `t0=True`;
2. step by step, for each accepted step: the `ts` values inside the step (those not yet
   saved and `<=` the step's end), then the step's `steps` value, if due (every
   `steps`-th accepted step; `save_every` reads `steps` from the `SubSaveAt`, as
   diffrax 0.7.0 and later versions mean it);
3. the value at the end of the solve, if `t1=True` and it was not saved as the last
   step's `steps` value.

A solve with `t0 == t1` takes no step; diffrax then saves the value at `t0` once for
each `ts` entry, and the value at `t1` after them.

A solve that stops early (`max_steps` reached with `throw=False`) saves fewer values:
only the `ts` up to the last accepted time, and the value at the end goes to the next
free slot, right after them. The unfilled slots at the end of the buffer hold `inf`,
and nothing in the solve depends on them.

`SaveLayout` answers "which slot?" from the number of accepted steps and their times,
which the backward pass knows, so that it reads each saved value's cotangent from the
slot the forward pass wrote.

With an event, what diffrax does after its loop (the value at the end, the `ts` values
of a solve with `t0 == t1`, and with a root finder, deleting the values saved after the
event) runs outside the custom VJP and is differentiated by JAX (`_event.py`): the
buffers the backward pass sees are those the loop left, without the values saved after
it (`at_end=False`).
"""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ._diffrax_internals import save_every


class SaveLayout(eqx.Module):
    """The buffer layout of one `SubSaveAt`. `t1`: whether the value at the end is
    in it; `at_end`: whether the values diffrax saves after its loop are."""

    ts: Array | None
    t0: bool = eqx.field(static=True)
    t1: bool = eqx.field(static=True)
    steps: int = eqx.field(static=True)
    at_end: bool = eqx.field(static=True, default=True)

    @classmethod
    def of(cls, sub, at_end: bool = True) -> "SaveLayout":
        """The layout of the buffer of `sub`, a `diffrax.SubSaveAt`, with the values
        saved after the loop if `at_end`."""
        return cls(
            ts=sub.ts,
            t0=sub.t0,
            t1=sub.t1 and at_end,
            steps=save_every(sub),
            at_end=at_end,
        )

    @property
    def offset(self) -> int:
        """Slots before the first value saved by a step: the value at `t0`, if any."""
        return 1 if self.t0 else 0

    @property
    def num_ts(self) -> int:
        return 0 if self.ts is None else len(self.ts)

    def ts_saved(self, num_steps, t):
        """How many `ts` values are saved once `num_steps` accepted steps have
        reached `t`. (Not for `t0 == t1`, which takes no step; see `t1_index`.)"""
        if self.ts is None:
            return 0
        count = jnp.searchsorted(self.ts, t, side="right").astype(jnp.int32)
        return jnp.where(num_steps > 0, count, 0)

    def steps_saved(self, num_steps):
        """How many `steps` values are saved after `num_steps` accepted steps."""
        return 0 if self.steps == 0 else num_steps // self.steps

    def ts_index(self, k, i):
        """The slot of `ts[i]`, saved inside the accepted step `k` (from 0)."""
        return self.offset + i + self.steps_saved(k)

    def steps_due(self, k):
        """Whether the end of accepted step `k` (from 0; `-1`: none) is saved as a
        `steps` value."""
        if self.steps == 0:
            return False
        return ((k + 1) % self.steps == 0) & (k >= 0)

    def steps_index(self, k, t_end):
        """The slot of the `steps` value at the end `t_end` of accepted step `k`, if
        `steps_due(k)`."""
        return self.offset + self.ts_saved(k + 1, t_end) + self.steps_saved(k + 1) - 1

    def t1_due(self, num_accepted):
        """Whether the end of a solve of `num_accepted` steps is saved as the `t1`
        value (rather than as the last `steps` value, or not at all)."""
        if not self.t1 or self.steps == 1:
            return False
        if self.steps == 0:
            return True
        return num_accepted % self.steps != 0

    def t1_index(self, num_accepted, t_final, t0_equals_t1):
        """The slot of the value at the end of a solve of `num_accepted` steps that
        reached `t_final`, if `t1_due`."""
        num_ts = jnp.where(
            t0_equals_t1, self.num_ts, self.ts_saved(num_accepted, t_final)
        )
        return self.offset + num_ts + self.steps_saved(num_accepted)

    def repeated_at_t0(self):
        """The slots of the `ts` values when `t0 == t1` (each holds the value at
        `t0`)."""
        return slice(self.offset, self.offset + self.num_ts)
