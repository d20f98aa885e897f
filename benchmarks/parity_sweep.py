"""Gradient parity of `ReversibleAdjoint` with `diffrax.RecursiveCheckpointAdjoint`
(same solver, same steps, float64) over many random configurations.

    python benchmarks/parity_sweep.py                    # 100 configurations, seed 0
    python benchmarks/parity_sweep.py --seed 7 --count 500
    python benchmarks/parity_sweep.py --seed 7 --only 42 # configuration 42 again
    python benchmarks/parity_sweep.py --quick            # 4 configurations

Each configuration is drawn from a random generator seeded by `--seed` and its index,
so `--seed S --only I` draws configuration `I` again without the others. It picks:
- the problem: the parity problem of `benchmarks/parity.py` (a time-dependent vector
  field on a pytree state, with parameters in `args` and inside the term), or it as
  a pair of terms for `SemiImplicitEuler`, or with an event (`diffrax.Event`: a real
  condition with Newton's method, one without a root finder, or a boolean one), or
  as a Stratonovich SDE on a `VirtualBrownianTree` (with or without an event);
- the solver: `ReversibleHeun` (ours or diffrax's), `AsynchronousLeapfrog`,
  `LeapfrogMidpoint`, `SemiImplicitEuler` (ours or diffrax's), or
  `Reversible(Midpoint | Heun | Bosh3 | Tsit5)` with the default coupling or 0.99;
- the step size controller (`ConstantStepSize`, `PIDController` with or without
  `step_ts`, started with a large `dt0` so that it rejects steps, or `StepTo` on a
  random grid) and the direction of time;
- what is saved: `SaveAt` with `ts`, `t0`, `t1`, `steps` (every step or every third),
  `fn`, `subs` or the final solver state;
- `ReversibleAdjoint(checkpoint_every=...)`, a solve truncated by a small `max_steps`
  (`throw=False`), and `jax.vmap` over `y0` with a different `t1`, and so a different
  number of steps, for each element (the same number on a `StepTo` grid, stretched
  with it);
- random times `t0`, `t1`, `dt0`, `SaveAt(ts)`, `StepTo` grid and event level.
Every input is differentiated: the term's parameters, `y0`, `args`, `t0`, `t1`,
`SaveAt(ts)`, `dt0`, the `StepTo` grid and the event's level (on an SDE, where the
`VirtualBrownianTree` is not differentiable in time, not the times: `ReversibleAdjoint`
refuses those). Combinations that `ReversibleAdjoint` or diffrax refuse are not
drawn; one the reference cannot run is skipped (`skip`), not counted as a failure.

A configuration passes when, for every input, the largest error relative to the
largest entry of the reference (per leaf) is under `--rtol` (default 1e-7), and the
reconstruction raised no drift warning. Some gradients are tiny differences of large
terms, known only to round-off: with constant steps of a high-order method, the
gradient with respect to `dt0` is of the size of the method's error (1e-9 with
`Tsit5`), and exact references of it (`RecursiveCheckpointAdjoint`, `DirectAdjoint`,
`ForwardMode`) differ by 1e-7 relative or more. So an input over
the tolerance passes if its difference from the reference is within 100 times that
between `RecursiveCheckpointAdjoint` and `diffrax.ForwardMode`, computed then; the
line says so (`at round-off`), with both differences.

One line per configuration: `ok`, `FAIL` or `skip`, the flags that run it again, the
worst error and the input it is on, the steps taken and rejected (per element under
`vmap`), how the solve ended, and the configuration. Then a summary; the exit status
is 1 if any configuration failed (an unexpected exception counts as a failure).

Each configuration compiles two gradients (and `ForwardMode`'s, for an input over the
tolerance): 16 s on average on a 2-core CPU shared with other jobs (155 configurations
in 42 minutes), so about 25 minutes for the default 100, and 50 s for `--quick`.
"""

import argparse
import dataclasses
import random
import sys
import time
import traceback
import warnings

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from _common import max_relative_error, parity_problem, readout

import reversible_adjoint as ra

jax.config.update("jax_enable_x64", True)

RTOL = 1e-7
# An input whose gradient differs from the reference's by more than `RTOL` passes if
# the difference is within `ROUND_OFF` times that between two exact references of it
# (`RecursiveCheckpointAdjoint` and `ForwardMode`).
ROUND_OFF = 100
BASES = {
    "Midpoint": diffrax.Midpoint,
    "Heun": diffrax.Heun,
    "Bosh3": diffrax.Bosh3,
    "Tsit5": diffrax.Tsit5,
}
SOLVERS = {
    "ReversibleHeun": ra.ReversibleHeun,
    "diffrax.ReversibleHeun": diffrax.ReversibleHeun,
    "AsynchronousLeapfrog": ra.AsynchronousLeapfrog,
    "LeapfrogMidpoint": ra.LeapfrogMidpoint,
    "SemiImplicitEuler": ra.SemiImplicitEuler,
    "diffrax.SemiImplicitEuler": diffrax.SemiImplicitEuler,
    **{f"Reversible({name})": None for name in BASES},
}
# What each kind of problem can be solved with: SemiImplicitEuler needs a pair of
# terms; SDEs need a Stratonovich scheme (not LeapfrogMidpoint, refused, nor ALF or a
# base method without a Stratonovich interpretation, which the solvers refuse).
KIND_SOLVERS = {
    "ode": [s for s in SOLVERS if "SemiImplicitEuler" not in s],
    "split": ["SemiImplicitEuler", "diffrax.SemiImplicitEuler"],
    "sde": ["ReversibleHeun", "diffrax.ReversibleHeun"]
    + ["Reversible(Midpoint)", "Reversible(Heun)"],
}
# No error estimate, so no adaptive steps (diffrax refuses them).
FIXED_STEPS = ("LeapfrogMidpoint", "SemiImplicitEuler", "diffrax.SemiImplicitEuler")
SAVEATS = (
    "ts,t1",
    "ts,steps,t1",
    "t0,ts,fn",
    "subs",
    "steps",
    "t0,steps=3,t1",
    "t1",
    "ts,solver_state",
)
EVENTS = ("newton", "real, no root finder", "boolean")
RESULT_NAMES = {
    int(item._value): name for name, item in diffrax.RESULTS._name_to_item.items()
}


@dataclasses.dataclass(frozen=True)
class Config:
    """One configuration. The times (`t0`, `t1`, `dt0`, `ts`, the `StepTo` grid, the
    `step_ts`) and the event's level are drawn with it; `str` gives its choices."""

    kind: str  # "ode", "split" (a pair of terms) or "sde"
    solver: str
    coupling: float | None  # `Reversible(coupling=...)`; None: the default
    controller: str  # "constant", "pid", "pid+step_ts" or "stepto"
    backwards: bool
    saveat: str
    event: str | None  # one of EVENTS, or None
    checkpoint_every: int | None
    max_steps: int  # small: truncated, with `throw=False`
    vmap: bool
    pid_rtol: float
    t0: float
    t1: float
    dt0: float
    ts: tuple
    grid: tuple  # the interior of the `StepTo` grid, or of `step_ts`
    level: float

    def __str__(self):
        solver = self.solver
        if self.coupling is not None:
            solver = solver.replace(")", f", coupling={self.coupling})")
        controller = self.controller
        if controller.startswith("pid"):
            controller += f"(rtol={self.pid_rtol:g})"
        parts = [
            self.kind,
            solver,
            controller,
            "backwards" if self.backwards else "forwards",
            f"SaveAt({self.saveat})",
        ]
        if self.event:
            parts.append(f"event({self.event})")
        if self.checkpoint_every:
            parts.append(f"checkpoint_every={self.checkpoint_every}")
        if self.max_steps < 64:
            parts.append(f"max_steps={self.max_steps}")
        if self.vmap:
            parts.append("vmap")
        return " ".join(parts)


def draw(seed, index):
    """Configuration `index` of the sweep seeded by `seed`."""
    rng = random.Random(f"parity_sweep:{seed}:{index}")
    kind = rng.choices(["ode", "split", "sde"], weights=[7, 1, 2])[0]
    solver = rng.choice(KIND_SOLVERS[kind])
    coupling = None
    if solver.startswith("Reversible(") and rng.random() < 0.3:
        coupling = 0.99
    controllers = ["constant", "stepto"]
    if solver not in FIXED_STEPS:
        controllers += ["pid", "pid", "pid+step_ts"]
    controller = rng.choice(controllers)
    backwards = rng.random() < 0.3
    event = None
    if kind != "split" and rng.random() < 0.3:
        event = rng.choice(EVENTS)
    truncated = rng.random() < 0.2
    # Under `vmap`, the root find runs for every element once one has an event, on
    # the last step each took: after a rejected step, on a solve stopped by
    # `max_steps`, `ReversibleAdjoint` gives NaN by design (tests/test_events.py).
    vmap = rng.random() < 0.2 and not (event and truncated)

    t0 = rng.uniform(-0.3, 0.3)
    t1 = t0 + rng.uniform(1.5, 2.5)
    if controller == "constant":
        dt0 = rng.uniform(0.03, 0.12)
    else:  # The first step of a PID controller, large so that it is rejected.
        dt0 = rng.uniform(0.2, 0.8)
    if rng.random() < 0.5:  # parity.py's save times, stretched onto [t0, t1].
        ts = [t0 + (t1 - t0) * float(t) / 2 for t in parity_problem()[3]]
    else:
        ts = sorted(rng.uniform(t0, t1) for _ in range(rng.randint(1, 6)))
    grid = sorted(rng.uniform(t0 + 0.01, t1 - 0.01) for _ in range(rng.randint(2, 14)))
    if controller == "pid+step_ts":
        grid = grid[:3]
    if backwards:
        t0, t1, dt0 = t1, t0, -dt0
        ts, grid = ts[::-1], grid[::-1]
    return Config(
        kind=kind,
        solver=solver,
        coupling=coupling,
        controller=controller,
        backwards=backwards,
        saveat=rng.choice(SAVEATS),
        event=event,
        checkpoint_every=rng.choice([None, None, 1, 3, 7]),
        max_steps=rng.randint(2, 15) if truncated else 1024,
        vmap=vmap,
        # SDEs take far more steps at the same tolerance.
        pid_rtol=rng.choice([1e-2, 1e-3] if kind == "sde" else [1e-3, 1e-4, 1e-5]),
        t0=t0,
        t1=t1,
        dt0=dt0,
        ts=tuple(ts),
        grid=tuple(grid),
        level=rng.uniform(0.3, 0.7),
    )


#
# Problems.
#


class Force(eqx.Module):
    """dp/dt = −a q − b cos(t) tanh(W q): the second term of the split problem."""

    W: jax.Array

    def __call__(self, t, q, args):
        a, b = args
        return -a * q - b * jnp.cos(t) * jnp.tanh(self.W @ q)


class Noise(eqx.Module):
    """Diagonal noise on the state of `Field`, depending on the state and time."""

    scale: jax.Array

    def __call__(self, t, y, args):
        sigma = {"x": 0.1 * jnp.cos(y["v"]), "v": 1.0 + 0.3 * jnp.sin(y["x"] + t)}
        return jtu.tree_map(lambda s: self.scale * jnp.diag(s), sigma)


def velocity(t, p, args):
    return (1.0 + 0.3 * jnp.sin(t)) * p


def make_inputs(config):
    """The differentiated inputs of `config`'s solve, by name; the terms are built from
    `"field"` (and `"noise"`) in `solve`."""
    term, y0, args, _ = parity_problem()
    field = term.vector_field
    if config.kind == "split":
        field, y0 = Force(field.W), (y0["x"], y0["v"])
    inputs = {"field": field, "y0": y0, "args": args}
    if config.kind == "sde":
        inputs["noise"] = Noise(jnp.array(0.5))
    times = {"t0": config.t0, "t1": config.t1, "ts": config.ts, "dt0": config.dt0}
    if config.controller == "stepto":
        times["grid"] = config.grid
    if config.event:
        times["level"] = config.level
    return {**inputs, **{name: jnp.array(x) for name, x in times.items()}}


def brownian_motion(config):
    """A fixed Brownian sample over the times of `config`'s solve."""
    shape = jax.ShapeDtypeStruct((2,), jnp.float64)
    lo, hi = sorted((config.t0, config.t1))
    return diffrax.VirtualBrownianTree(
        lo - 0.1, hi + 0.1, 1e-5, {"x": shape, "v": shape}, key=jax.random.PRNGKey(0)
    )


def make_solver(config):
    if config.solver.startswith("Reversible("):
        base = BASES[config.solver[len("Reversible(") : -1]]()
        if config.coupling is None:
            return ra.Reversible(base)
        return ra.Reversible(base, coupling=config.coupling)
    return SOLVERS[config.solver]()


def make_saveat(name, ts):
    def fn(t, y, args):
        return jtu.tree_map(lambda x: jnp.sin(t) * x**2, y)

    if name == "subs":
        return diffrax.SaveAt(
            subs=[
                diffrax.SubSaveAt(ts=ts, fn=fn),
                diffrax.SubSaveAt(t1=True),
                diffrax.SubSaveAt(t0=True, steps=True),
            ]
        )
    options = {"fn": fn, "solver_state": True, "steps=3": 3}
    kwargs = {}
    for part in name.split(","):
        key, _, _ = part.partition("=")
        kwargs[key] = ts if key == "ts" else options.get(part, True)
    return diffrax.SaveAt(**kwargs)


def make_event(config, y0, level):
    """The event: where `x[0]` crosses `level`, from the side it starts on."""

    def distance(t, y, args, **kwargs):
        return y["x"][0] - level

    if config.event == "boolean":
        side = jax.lax.stop_gradient(jnp.sign(y0["x"][0] - level))
        return diffrax.Event(
            lambda t, y, args, **kwargs: side * distance(t, y, args) < 0
        )
    root_finder = optx.Newton(rtol=1e-12, atol=1e-12)
    return diffrax.Event(distance, root_finder if config.event == "newton" else None)


def finite(tree):
    """`tree` with the `inf`s diffrax fills unused saves with replaced by zeros."""
    return jtu.tree_map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), tree)


def solve(config, inputs, adjoint, scale=1.0):
    """`config`'s solve of `inputs` with `adjoint`; with `scale`, every time after
    `t0` moved `scale` times as far from it (so the number of steps changes). Returns
    the loss and the solve's statistics and result."""
    v = dict(inputs)
    if config.kind == "sde":
        # Not differentiable in time through a VirtualBrownianTree.
        for name in ("t0", "t1", "dt0", "grid"):
            if name in v:
                v[name] = jax.lax.stop_gradient(v[name])
    t0, dt0 = v["t0"], v["dt0"]
    stretch = lambda t: t0 + scale * (t - t0)
    t1, ts = stretch(v["t1"]), stretch(v["ts"])
    if config.controller == "constant":
        controller = diffrax.ConstantStepSize()
    elif config.controller == "stepto":
        grid = jnp.concatenate([t0[None], stretch(v["grid"]), t1[None]])
        controller, dt0 = diffrax.StepTo(grid), None
    else:
        step_ts = config.grid if config.controller == "pid+step_ts" else None
        controller = diffrax.PIDController(
            rtol=config.pid_rtol, atol=config.pid_rtol * 1e-2, step_ts=step_ts
        )
    if config.kind == "split":
        terms = (diffrax.ODETerm(velocity), diffrax.ODETerm(v["field"]))
    else:
        terms = diffrax.ODETerm(v["field"])
    if config.kind == "sde":
        bm = brownian_motion(config)
        terms = diffrax.MultiTerm(terms, diffrax.ControlTerm(v["noise"], bm))
    event = make_event(config, v["y0"], v["level"]) if config.event else None
    sol = diffrax.diffeqsolve(
        terms,
        make_solver(config),
        t0,
        t1,
        dt0,
        v["y0"],
        args=v["args"],
        saveat=make_saveat(config.saveat, ts),
        stepsize_controller=controller,
        event=event,
        adjoint=adjoint,
        max_steps=config.max_steps,
        throw=False,
    )
    loss = readout(finite(sol.ys)) + 0.3 * readout(finite(sol.ts))
    if sol.solver_state is not None:
        loss = loss + readout(sol.solver_state)
    stats = sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"]
    return loss, (*stats, sol.result._value)


def loss(config, inputs, adjoint):
    if not config.vmap:
        return solve(config, inputs, adjoint)

    # Two elements: `y0` scaled, and every time stretched, differently.
    def one(c, scale):
        scaled = {**inputs, "y0": jtu.tree_map(lambda x: c * x, inputs["y0"])}
        return solve(config, scaled, adjoint, scale)

    losses, aux = jax.vmap(one)(jnp.array([1.0, 1.3]), jnp.array([1.0, 0.6]))
    return jnp.sum(losses * jnp.array([1.0, 0.7])), aux


#
# The sweep.
#


def check(config, rtol):
    """Compares the two gradients of `config`'s loss. Returns `(status, worst error,
    the input it is on, a note)`."""
    inputs = make_inputs(config)

    @eqx.filter_jit
    def grad(inputs, adjoint):
        return eqx.filter_grad(lambda i: loss(config, i, adjoint), has_aux=True)(inputs)

    reference = diffrax.RecursiveCheckpointAdjoint(checkpoints=config.max_steps)
    try:
        want, (accepted, rejected, result) = grad(inputs, reference)
    except Exception as error:  # noqa: BLE001 - diffrax cannot run it: not ours.
        return "skip", None, None, f"reference raised {_first_line(error)}"
    adjoint = ra.ReversibleAdjoint(checkpoint_every=config.checkpoint_every)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ra.ReconstructionDriftWarning)
        got, _ = grad(inputs, adjoint)
        jax.effects_barrier()
    errors = {name: max_relative_error(got[name], want[name]) for name in want}
    results = ",".join(RESULT_NAMES[int(r)] for r in jnp.atleast_1d(result))
    note = f"steps {_ints(accepted)} rejected {_ints(rejected)} {results}"
    for name, error in list(errors.items()):
        if error < rtol:
            continue
        difference = _max_difference(got[name], want[name])
        spread = forward_mode_spread(config, inputs, name, want[name])
        if spread is not None and difference <= ROUND_OFF * spread:
            del errors[name]
            note += (
                f" {name} at round-off: |ours - RCA| {difference:.1e}, "
                f"|ForwardMode - RCA| {spread:.1e}"
            )
    if not any(jnp.any(x != 0) for x in jtu.tree_leaves(want)):
        note += " zero reference gradient"
    drift = [w for w in caught if issubclass(w.category, ra.ReconstructionDriftWarning)]
    if drift:
        note += f" drift warning: {_first_line(drift[0].message)}"
    if not errors:
        return "ok", None, None, note
    name = max(errors, key=lambda n: (errors[n] != errors[n], errors[n]))
    ok = errors[name] < rtol and not drift
    return "ok" if ok else "FAIL", errors[name], name, note


def forward_mode_spread(config, inputs, name, want):
    """The largest entry of |ForwardMode − RCA| in the gradient with respect to input
    `name`: how far apart two exact references are, in round-off; `None` if
    `diffrax.ForwardMode` cannot run the solve."""

    def value(x):
        return loss(config, {**inputs, name: x}, diffrax.ForwardMode())[0]

    try:
        forward = eqx.filter_jit(jax.jacfwd(value))(inputs[name])
    except Exception:  # noqa: BLE001 - then no round-off allowance.
        return None
    return _max_difference(forward, want)


def _max_difference(a, b):
    leaves = zip(jtu.tree_leaves(a), jtu.tree_leaves(b), strict=True)
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in leaves)


def _ints(x):
    return ",".join(str(int(a)) for a in jnp.atleast_1d(x))


def _first_line(error):
    text = str(error).strip()
    return type(error).__name__ + (": " + text.splitlines()[0][:200] if text else "")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=None, help="default 100")
    parser.add_argument("--only", type=int, nargs="+", help="these indices only")
    parser.add_argument("--quick", action="store_true", help="4 configurations")
    parser.add_argument("--rtol", type=float, default=RTOL)
    options = parser.parse_args(argv)
    count = options.count or (4 if options.quick else 100)
    indices = options.only if options.only is not None else range(count)

    tally = {"ok": 0, "FAIL": 0, "skip": 0}
    worst, at_round_off = (0.0, None), 0
    start = time.perf_counter()
    for index in indices:
        config = draw(options.seed, index)
        repro = f"--seed {options.seed} --only {index}"
        try:
            status, error, name, note = check(config, options.rtol)
        except Exception as exception:  # noqa: BLE001 - reported, and a failure.
            status, error, name = "FAIL", None, None
            note = f"raised {_first_line(exception)}"
            traceback.print_exc(file=sys.stderr)
        tally[status] += 1
        at_round_off += "at round-off" in note
        if error is not None and status != "skip":
            worst = max(worst, (error, repro), key=lambda w: (w[0] != w[0], w[0]))
        jax.clear_caches()  # Each configuration compiles programs of its own.
        shown = "-" if error is None else f"{error:.1e} ({name})"
        print(f"{status:4s} {repro:22s} {shown:20s} {note} | {config}", flush=True)
    minutes = (time.perf_counter() - start) / 60
    print(
        f"{sum(tally.values())} configurations in {minutes:.1f} min: "
        f"{tally['ok']} ok ({at_round_off} with an input at round-off), "
        f"{tally['FAIL']} failed, {tally['skip']} skipped; "
        f"worst error {worst[0]:.1e} ({worst[1] or '-'}), tolerance {options.rtol:g}"
    )
    return 1 if tally["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
