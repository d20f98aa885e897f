"""How `Reversible` steps its base method: from the Butcher tableau, its stages in a
`lax.scan` (what it does), against diffrax's own Runge–Kutta `step`, whose stages run in
an `equinox.internal.while_loop` of kind `scan_kind`: `None` (the default) is
`"checkpointed"`, a `custom_vjp` that evaluates every stage again in its pullback and
that forward mode cannot differentiate; `"bounded"` can be differentiated in both
modes. (`"lax"` cannot be reverse-differentiated.) The cost of each, for the
reverse-mode adjoints (`ReversibleAdjoint`, `RecursiveCheckpointAdjoint`), and
whether it changes the solver's output. A base stepped by its own `step` is a
subclass of the base method that overrides `step` (with diffrax's), which
`Reversible` does not step from its tableau; `ReversibleAdjoint` fuses its backward
step with `scan_kind=None`, not with `"bounded"`.

Problem: a small MLP neural ODE (width 64, depth 2, batch 16 x state 32), float32, 2000
constant steps on [0, 1], gradient of `mean(y(1) ** 2)` with respect to the MLP's
parameters and `y0`. Memory is read from the compiled program
(`memory_analysis().temp_size_in_bytes`); times are medians of interleaved repeats.
With `--hlo-digest`, prints a digest of each default configuration's compiled-for
program text instead (to check that a change leaves the program unchanged).

    python benchmarks/scan_kind.py [--steps 2000] [--repeats 5] [--hlo-digest]
"""

import argparse
import hashlib

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from _common import round_robin, temp_bytes

import reversible_adjoint as ra


class _LoopedMidpoint(diffrax.Midpoint):
    def step(self, *args):
        return super().step(*args)  # diffrax's stage loop


class _LoopedTsit5(diffrax.Tsit5):
    def step(self, *args):
        return super().step(*args)  # diffrax's stage loop


BASES = {"Midpoint": diffrax.Midpoint, "Tsit5": diffrax.Tsit5}
LOOPED = {"Midpoint": _LoopedMidpoint, "Tsit5": _LoopedTsit5}
ADJOINTS = {
    "ReversibleAdjoint": ra.ReversibleAdjoint,
    "RecursiveCheckpointAdjoint": diffrax.RecursiveCheckpointAdjoint,
}
# How the base is stepped: from its tableau (`Reversible`'s way), or by diffrax's `step`
# with its stages in a loop of kind `scan_kind`.
KINDS = ("tableau", "loop:None", "loop:bounded")


def make_problem():
    keys = jr.split(jr.PRNGKey(0), 2)
    mlp = eqx.nn.MLP(32, 32, 64, 2, activation=jnp.tanh, key=keys[0])
    y0 = 0.5 * jr.normal(keys[1], (16, 32))
    params, static = eqx.partition(mlp, eqx.is_array)
    terms = diffrax.ODETerm(lambda t, y, m: jax.vmap(m)(y))
    return params, static, terms, y0


def make_fns(base, kind, adjoint, num_steps):
    params, static, terms, y0 = make_problem()
    if kind == "tableau":
        solver = ra.Reversible(BASES[base]())
    else:
        scan_kind = None if kind == "loop:None" else kind.removeprefix("loop:")
        solver = ra.Reversible(LOOPED[base](scan_kind=scan_kind))

    def solve(params, y0, adjoint):
        sol = diffrax.diffeqsolve(
            terms,
            solver,
            0.0,
            1.0,
            1.0 / num_steps,
            y0,
            args=eqx.combine(params, static),
            adjoint=adjoint,
            max_steps=num_steps,
        )
        return sol.ys[-1]

    grad = jax.jit(
        jax.grad(lambda p, y: jnp.mean(solve(p, y, ADJOINTS[adjoint]()) ** 2), (0, 1))
    )
    forward = jax.jit(lambda p, y: solve(p, y, diffrax.RecursiveCheckpointAdjoint()))
    return grad, forward, (params, y0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hlo-digest", action="store_true")
    cli = parser.parse_args()

    if cli.hlo_digest:
        for base in BASES:
            for adjoint in ADJOINTS:
                grad, forward, args = make_fns(base, "tableau", adjoint, cli.steps)
                for name, fn in (("gradient", grad), ("forward", forward)):
                    text = fn.lower(*args).as_text()
                    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
                    print(f"{base:8s} {adjoint:26s} {name:8s} {digest}")
        return

    compiled, memory, outputs = {}, {}, {}
    for base in BASES:
        for adjoint in ADJOINTS:
            for kind in KINDS:
                key = (base, adjoint, kind)
                grad, forward, args = make_fns(base, kind, adjoint, cli.steps)
                compiled[key] = grad.lower(*args).compile()
                memory[key] = temp_bytes(compiled[key])
                outputs[key] = np.asarray(forward(*args))

    # Interleaved, rotating rounds: every configuration shares the machine's noise.
    times = round_robin(compiled, args, cli.repeats, rotate=True)

    print(f"{cli.steps} steps, median of {cli.repeats} interleaved repeats")
    print(
        f"{'base':8s} {'adjoint':26s} {'stages':12s} {'time (s)':>9s} "
        f"{'temp MiB':>9s} {'vs tableau':>14s} {'max |Δy(1)|':>12s}"
    )
    for key in compiled:
        base, adjoint, kind = key
        ref = (base, adjoint, "tableau")
        t, t_ref = times[key], times[ref]
        diff = np.max(np.abs(outputs[key] - outputs[ref]))
        print(
            f"{base:8s} {adjoint:26s} {kind:12s} {t:9.3f} "
            f"{memory[key] / 2**20:9.2f} "
            f"{t / t_ref:6.2f}x {memory[key] / memory[ref]:5.2f}x {diff:12.3g}"
        )


if __name__ == "__main__":
    main()
