"""Events (`diffrax.Event`): the solve stops where a condition triggers, and gradients
flow through the event time (with a root finder, by the implicit function theorem)
exactly as with `RecursiveCheckpointAdjoint`; without a root finder, or with a boolean
condition, the solve stops at the end of a step and the discrete choice carries no
derivative, as with diffrax's adjoints.

Stratonovich SDEs too, with every solver `ReversibleAdjoint` supports for them.

Compiling a solve with a root find is slow, so the default suite runs a root find with
adaptive steps, a boolean condition and a root find on an SDE; the rest (every solver,
several conditions, no trigger, the event at `t0`, backwards in time, checkpoints, a
bouncing ball, a neural ODE, memory, SDEs with other solvers and conditions, adaptive
steps and `jax.vmap`) are marked `slow`, which `.ci/run` runs after the suite."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import optimistix as optx
import pytest

import reversible_adjoint as ra
from reversible_adjoint._diffrax_internals import EVENTS_SINCE, release

from .helpers import (
    check_gradient_parity,
    make_split_problem,
    max_relative_error,
    mlp_term,
    readout,
)
from .test_sde import GridBrownianPath

pytestmark = pytest.mark.skipif(
    release(diffrax.__version__) < EVENTS_SINCE,
    reason="events need diffrax 0.7.2 or later (tests/test_refusals.py)",
)

NEWTON = optx.Newton(rtol=1e-12, atol=1e-12)
PID = diffrax.PIDController(rtol=1e-4, atol=1e-6)


class Projectile(eqx.Module):
    """A projectile with quadratic drag (`drag`, inside the term) in gravity and a
    time-dependent horizontal force, on a pytree state; `args = (g, gust)`."""

    drag: jax.Array

    def __call__(self, t, y, args):
        g, gust = args
        vx, vh = y["vel"][0], y["vel"][1]
        speed = jnp.sqrt(vx**2 + vh**2)
        force = jnp.stack([gust * jnp.sin(3 * t), -g])
        return {"pos": y["vel"], "vel": force - self.drag * speed * y["vel"]}


class Height(eqx.Module):
    """The height above the ground at `level` (a parameter of the condition): a real
    condition, or with `boolean`, whether the projectile is below the ground."""

    level: jax.Array
    boolean: bool = eqx.field(static=True, default=False)

    def __call__(self, t, y, args, **kwargs):
        height = y["pos"][1] - self.level
        return height < 0 if self.boolean else height


def projectile_inputs(level=0.0):
    terms = diffrax.ODETerm(Projectile(jnp.array(0.1)))
    y0 = {"pos": jnp.array([0.0, 1.0]), "vel": jnp.array([3.0, 4.0])}
    args = (jnp.array(9.81), jnp.array(0.8))
    # Save times before the event (about t = 1.0) and after it.
    ts = jnp.array([0.05, 0.3, 0.62, 0.9, 1.2, 1.5])
    return terms, y0, args, jnp.array(0.02), ts, jnp.array(level)


NAMES = ("terms", "y0", "args", "t0", "ts", "level")


def finite(tree):
    """`tree` with its non-finite entries (the values diffrax fills with `inf` after
    the event) replaced by zeros."""
    return jtu.tree_map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), tree)


def solve_projectile(
    inputs,
    adjoint,
    *,
    solver=None,
    controller=PID,
    root_finder=NEWTON,
    boolean=False,
    saveat=None,
    event="ground",
    t1=10.0,
    dt0=0.02,
    max_steps=512,
):
    """The projectile solved from `inputs`, stopped by `event` (by default where it
    reaches the ground, with `root_finder`; `None`: no event)."""
    terms, y0, args, t0, ts, level = inputs
    if event == "ground":
        event = diffrax.Event(Height(level, boolean), root_finder)
    if saveat is None:
        saveat = diffrax.SaveAt(
            subs=(diffrax.SubSaveAt(ts=ts), diffrax.SubSaveAt(t1=True))
        )
    elif callable(saveat):
        saveat = saveat(ts)
    return diffrax.diffeqsolve(
        terms,
        ra.ReversibleHeun() if solver is None else solver,
        t0,
        t1,
        dt0,
        y0,
        args=args,
        saveat=saveat,
        stepsize_controller=controller,
        event=event,
        adjoint=adjoint,
        max_steps=max_steps,
    )


def last_saved(x):
    """The last value saved in a buffer `x` (those after it are `inf`)."""
    return x[jnp.sum(jnp.isfinite(x)) - 1]


def event_loss(sol):
    """A nonlinear loss of the saved values and times, and of the time saved last
    (with `t1=True`, the event time)."""
    last = last_saved(jtu.tree_leaves(sol.ts)[-1])
    return readout(finite(sol.ys)) + readout(finite(sol.ts)) + last**2


def check_projectile(nonzero=NAMES, inputs=None, adjoint=None, **kwargs):
    """Gradient parity of `event_loss` on the projectile, solved with `kwargs`."""

    def loss(inputs, adjoint):
        return event_loss(solve_projectile(inputs, adjoint, **kwargs))

    inputs = projectile_inputs() if inputs is None else inputs
    adjoint = ra.ReversibleAdjoint() if adjoint is None else adjoint
    check_gradient_parity(loss, inputs, names=NAMES, nonzero=nonzero, adjoint=adjoint)


@pytest.mark.parametrize(
    "controller", ["pid", pytest.param("constant", marks=pytest.mark.slow)]
)
def test_projectile_root_find(controller):
    """Real condition and Newton's method: the event time and the state there move
    with every input, the ground level included; save times before the event have
    their gradients, those after it are `inf` and have none."""
    controller = {"pid": PID, "constant": diffrax.ConstantStepSize()}[controller]

    # The values at `ts` and at the event in one buffer: the four `ts` before the
    # event, then the event, then `inf`.
    def saveat(ts):
        return diffrax.SaveAt(ts=ts, t1=True)

    sols = [
        solve_projectile(
            projectile_inputs(), adjoint, controller=controller, saveat=saveat
        )
        for adjoint in (ra.ReversibleAdjoint(), diffrax.RecursiveCheckpointAdjoint())
    ]
    for sol in sols:
        assert sol.result == diffrax.RESULTS.event_occurred
        assert jnp.all(jnp.isinf(sol.ys["pos"][5:])), "saved after the event"
        assert abs(sol.ys["pos"][4, 1]) < 1e-10, "the event is on the ground"
    assert max_relative_error(finite(sols[0].ys), finite(sols[1].ys)) == 0
    check_projectile(controller=controller, saveat=saveat)


@pytest.mark.parametrize(
    "boolean",
    [pytest.param(False, marks=pytest.mark.slow), True],
    ids=["real", "boolean"],
)
def test_stop_at_step_end(boolean):
    """Without a root finder (a real condition) or with a boolean condition, the
    solve stops at the end of the step in which the condition triggers: no
    derivative with respect to the condition's parameter."""
    nonzero = ("terms", "y0", "args", "t0", "ts")
    root_finder = NEWTON if boolean else None
    check_projectile(nonzero, boolean=boolean, root_finder=root_finder)


@pytest.mark.slow
@pytest.mark.int_steps
def test_save_steps():
    """`SaveAt(steps=...)`: diffrax deletes the last step's value, after the event,
    and saves the value at the event instead."""
    saveat = diffrax.SaveAt(
        subs=[diffrax.SubSaveAt(steps=True), diffrax.SubSaveAt(steps=3, t1=True)]
    )
    check_projectile(NAMES[:4], saveat=saveat)


@pytest.mark.slow
def test_several_conditions():
    """A PyTree of conditions: the first to trigger wins (here a wall, boolean, before
    the ground, real), and `event_mask` says which."""

    def loss(inputs, adjoint, wall):
        cond_fn = (
            Height(inputs[-1]),
            lambda t, y, args, **kwargs: y["pos"][0] > wall,
        )
        event = diffrax.Event(cond_fn, NEWTON, direction=(False, None))
        sol = solve_projectile(inputs, adjoint, event=event)
        return event_loss(sol), sol.event_mask

    inputs = projectile_inputs()
    _, _, mask = check_gradient_parity(
        lambda inputs, adjoint: loss(inputs, adjoint, 1.5),
        inputs,
        names=NAMES,
        nonzero=("y0", "args", "t0", "ts"),
        has_aux=True,
    )
    assert tuple(bool(x) for x in mask) == (False, True)
    _, mask = loss(inputs, ra.ReversibleAdjoint(), 50.0)
    assert tuple(bool(x) for x in mask) == (True, False)


@pytest.mark.slow
def test_no_trigger():
    """An event that never triggers changes nothing: the gradient is that of the same
    solve without an event. Under `jax.vmap`, where one solve of the batch triggers
    and another does not, each still matches `RecursiveCheckpointAdjoint`."""
    inputs = projectile_inputs(level=-100.0)

    def loss(inputs, adjoint, event="ground"):
        return event_loss(solve_projectile(inputs, adjoint, event=event, t1=2.0))

    grad = eqx.filter_jit(eqx.filter_grad(loss))
    with_event = grad(inputs, ra.ReversibleAdjoint())
    without = grad(inputs, ra.ReversibleAdjoint(), None)
    assert max_relative_error(with_event, without) < 1e-12

    def batch_loss(inputs, adjoint):
        levels = jnp.stack([inputs[-1], jnp.array(0.0)])
        losses = jax.vmap(lambda level: loss((*inputs[:-1], level), adjoint))(levels)
        return jnp.sum(losses * jnp.array([1.0, 0.5]))

    check_gradient_parity(batch_loss, inputs, names=NAMES, nonzero=NAMES[:5])


@pytest.mark.slow
def test_event_at_start():
    """A boolean condition already true at `t0`: no step, the event time is `t0`."""
    inputs = projectile_inputs(level=2.0)
    check_projectile(("y0", "t0"), inputs=inputs, boolean=True)


@pytest.mark.slow
def test_backwards_in_time():
    """`t1 < t0`: the projectile traced back to where it left the ground."""
    check_projectile(
        ("terms", "y0", "args", "t0", "level"),
        saveat=diffrax.SaveAt(t1=True),
        t1=-10.0,
        dt0=-0.02,
    )


SOLVERS = {
    "diffrax.ReversibleHeun": (diffrax.ReversibleHeun(), PID),
    "AsynchronousLeapfrog": (ra.AsynchronousLeapfrog(), PID),
    "Reversible(Midpoint)": (ra.Reversible(diffrax.Midpoint()), PID),
    "LeapfrogMidpoint": (ra.LeapfrogMidpoint(), diffrax.ConstantStepSize()),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SOLVERS))
def test_every_solver(name):
    solver, controller = SOLVERS[name]
    check_projectile(NAMES[:4], solver=solver, controller=controller)


@pytest.mark.slow
def test_semi_implicit_euler():
    """A partitioned solver on a pair of terms, stopped where `q` crosses zero."""
    terms, y0, args = make_split_problem()

    def loss(inputs, adjoint):
        terms, y0, args, t0 = inputs
        sol = diffrax.diffeqsolve(
            terms,
            ra.SemiImplicitEuler(),
            t0,
            5.0,
            0.01,
            y0,
            args=args,
            saveat=diffrax.SaveAt(ts=jnp.array([0.1, 0.4, 4.0]), t1=True),
            event=diffrax.Event(lambda t, y, args, **kw: y[0]["u"][0], NEWTON),
            adjoint=adjoint,
            max_steps=1024,
        )
        return event_loss(sol)

    check_gradient_parity(loss, (terms, y0, args, jnp.array(0.0)), nonzero=(1, 2, 3))


@pytest.mark.slow
@pytest.mark.parametrize("controller", ["stepto", "pid"])
def test_checkpoints(controller):
    """With checkpoints: the grid recomputed (`StepTo`, whose times are
    differentiated too) or recorded (`PIDController`)."""
    adjoint = ra.ReversibleAdjoint(checkpoint_every=7)
    if controller == "stepto":
        interior = jnp.linspace(0.05, 3.0, 120) ** 1.1

        def loss(inputs, adjoint):
            *inputs, interior = inputs
            grid = jnp.concatenate([inputs[3][None], interior])
            controller = diffrax.StepTo(grid)
            sol = solve_projectile(
                inputs, adjoint, controller=controller, dt0=None, t1=grid[-1]
            )
            return event_loss(sol)

        check_gradient_parity(
            loss,
            (*projectile_inputs(), interior),
            adjoint=adjoint,
            nonzero=(0, 1, 2, 6),
        )
    else:
        check_projectile(NAMES[:4], controller=PID, adjoint=adjoint)


@pytest.mark.slow
def test_bouncing_ball():
    """A ball with drag bouncing twice: one `diffeqsolve` per flight, each
    stopped where it lands (downcrossings only: each flight starts on the ground),
    the next starting from its event time and state with the velocity reversed and
    scaled by the coefficient of restitution."""

    def field(t, y, args):
        g, drag, _ = args
        h, v = y
        return jnp.stack([v, -g - drag * v * jnp.abs(v)])

    def loss(inputs, adjoint):
        y0, args, t0 = inputs
        restitution = args[2]
        event = diffrax.Event(lambda t, y, args, **kw: y[0], NEWTON, direction=False)
        total = 0.0
        for _ in range(2):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(field),
                ra.ReversibleHeun(),
                t0,
                t0 + 10.0,
                0.01,
                y0,
                args=args,
                saveat=diffrax.SaveAt(
                    subs=(
                        diffrax.SubSaveAt(ts=t0 + jnp.array([0.2, 0.5])),
                        diffrax.SubSaveAt(t1=True),
                    )
                ),
                stepsize_controller=PID,
                event=event,
                adjoint=adjoint,
                max_steps=512,
            )
            total = total + event_loss(sol)
            t0 = sol.ts[1][0]
            y0 = jnp.stack([0.0, -restitution * sol.ys[1][0, 1]])
        return total

    inputs = (jnp.array([1.0, 2.0]), jnp.array([9.81, 0.05, 0.8]), jnp.array(0.1))
    check_gradient_parity(loss, inputs, nonzero=(0, 1, 2))


@pytest.mark.slow
def test_neural_ode_learned_event():
    """A neural vector field, stopped where a learned linear function of the state
    crosses zero."""

    class Threshold(eqx.Module):
        weights: jax.Array
        bias: jax.Array

        def __call__(self, t, y, args, **kwargs):
            return self.weights @ y - self.bias

    term = mlp_term(jr.PRNGKey(1))
    y0 = jnp.array([0.5, -0.3, 0.2])
    threshold = Threshold(jnp.array([1.0, 0.5, -0.5]), jnp.array(0.9))

    def loss(inputs, adjoint):
        term, y0, threshold = inputs
        sol = diffrax.diffeqsolve(
            term,
            ra.ReversibleHeun(),
            0.0,
            20.0,
            0.02,
            y0,
            args=jnp.array(2.0),
            saveat=diffrax.SaveAt(
                subs=(
                    diffrax.SubSaveAt(ts=jnp.array([0.1, 0.2])),
                    diffrax.SubSaveAt(t1=True),
                )
            ),
            stepsize_controller=PID,
            event=diffrax.Event(threshold, NEWTON),
            adjoint=adjoint,
            max_steps=1024,
        )
        return event_loss(sol), sol.result

    _, _, result = check_gradient_parity(
        loss, (term, y0, threshold), nonzero=(0, 1, 2), has_aux=True
    )
    assert result == diffrax.RESULTS.event_occurred


def _temp_bytes(adjoint, max_steps):
    inputs = projectile_inputs()

    def loss(inputs):
        sol = solve_projectile(inputs, adjoint, max_steps=max_steps)
        return event_loss(sol)

    params, static = eqx.partition(inputs, eqx.is_inexact_array)
    grad = jax.grad(lambda p: loss(eqx.combine(p, static)))
    compiled = jax.jit(grad).lower(params).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_memory_flat_in_steps():
    """Apart from the record of step times (one scalar per step, and one per time
    direction: here `t0` moves `tprev` and `tnext`, so `D = 2`), the compiled
    gradient's memory does not grow with `max_steps`."""
    small = _temp_bytes(ra.ReversibleAdjoint(), 100)
    large = _temp_bytes(ra.ReversibleAdjoint(), 4_000)
    record = 3 * 8 * (4_000 - 100)
    assert large - small <= 2 * record, (small, large)
    # For contrast (and to show this test can fail): storing every step grows by at
    # least a state (8 float64s) per step, more than twice the record does.
    store_all = [
        _temp_bytes(diffrax.RecursiveCheckpointAdjoint(checkpoints=n), n)
        for n in (100, 4_000)
    ]
    assert store_all[1] - store_all[0] > 8 * 8 * (4_000 - 100) > 2 * record


#
# SDEs: the projectile with noise in its position and velocity, a Stratonovich SDE.
#

SDE_T1 = 3.0


class Diffusion(eqx.Module):
    """State-dependent, time-dependent diagonal noise on a pytree state, scaled by
    `scale` (a parameter inside the term)."""

    scale: jax.Array

    def __call__(self, t, y, args):
        return {
            "pos": 0.1 * self.scale * jnp.diag(jnp.cos(y["vel"])),
            "vel": self.scale * jnp.diag(1.0 + 0.3 * jnp.sin(y["pos"] + t)),
        }


def sde_inputs(path="grid", level=0.0, key=jr.PRNGKey(0)):
    """`projectile_inputs` with noise: on a `GridBrownianPath` (differentiable in
    time, so `t0` is differentiated too) or a `VirtualBrownianTree` (not: `t0` is
    then a Python float, and has no gradient)."""
    terms, y0, args, t0, ts, level = projectile_inputs(level)
    leaf = jax.ShapeDtypeStruct((2,), jnp.float64)
    shape = {"pos": leaf, "vel": leaf}
    if path == "grid":
        bm = GridBrownianPath(key, shape, -1.0, SDE_T1 + 1.0)
    else:
        bm = diffrax.VirtualBrownianTree(-1.0, SDE_T1, 1e-5, shape, key=key)
        t0 = float(t0)
    terms = diffrax.MultiTerm(terms, diffrax.ControlTerm(Diffusion(jnp.array(0.5)), bm))
    return terms, y0, args, t0, ts, level


def sde_nonzero(names):
    """The parts of the reference gradient that must not be zero: those in `names`,
    and the diffusion's parameter."""

    def nonzero(want):
        parts = dict(zip(NAMES, want))
        scale = parts["terms"].terms[1].vector_field.scale
        return [scale, *(parts[name] for name in names)]

    return nonzero


def check_sde(nonzero=NAMES, inputs=None, adjoint=None, **kwargs):
    """Gradient parity of `event_loss` on the noisy projectile, solved with `kwargs`
    (constant steps unless `controller` says otherwise). Returns the reference
    solve's `result`."""
    kwargs.setdefault("controller", diffrax.ConstantStepSize())

    def loss(inputs, adjoint):
        sol = solve_projectile(inputs, adjoint, t1=SDE_T1, **kwargs)
        return event_loss(sol), sol.result

    inputs = sde_inputs() if inputs is None else inputs
    adjoint = ra.ReversibleAdjoint() if adjoint is None else adjoint
    _, _, result = check_gradient_parity(
        loss,
        inputs,
        names=NAMES,
        nonzero=sde_nonzero(nonzero),
        adjoint=adjoint,
        has_aux=True,
    )
    return result


def test_sde_root_find():
    """A Stratonovich SDE, stopped where a real condition crosses zero (Newton's
    method): every input has its gradient, the diffusion's parameter, the ground
    level and `t0` (through the Brownian path) included."""
    result = check_sde()
    assert result == diffrax.RESULTS.event_occurred


@pytest.mark.slow
@pytest.mark.parametrize(
    "solver",
    [diffrax.ReversibleHeun(), ra.Reversible(diffrax.Midpoint())],
    ids=["diffrax.ReversibleHeun", "Reversible(Midpoint)"],
)
def test_sde_solvers(solver):
    """The other reversible solvers for Stratonovich SDEs; `Reversible`'s root find
    reads the base method's dense output (cubic Hermite on the stage increments),
    and its save times too."""
    check_sde(solver=solver, saveat=lambda ts: diffrax.SaveAt(ts=ts, t1=True))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["boolean", "no root finder", "no trigger"])
def test_sde_stop_at_step_end(kind):
    """A boolean condition, a real one without a root finder, and one that never
    triggers: the solve stops at the end of a step (or at `t1`), and the condition's
    parameter has no gradient."""
    inputs = sde_inputs(level=-100.0 if kind == "no trigger" else 0.0)
    result = check_sde(
        ("terms", "y0", "args", "t0", "ts"),
        inputs=inputs,
        boolean=kind == "boolean",
        root_finder=None if kind == "no root finder" else NEWTON,
    )
    assert (result == diffrax.RESULTS.event_occurred) == (kind != "no trigger")


@pytest.mark.slow
def test_sde_adaptive():
    """Adaptive steps on a `VirtualBrownianTree` (not differentiable in time, so no
    `t0` gradient), with `Reversible(diffrax.Heun())`, whose error estimate drives
    the controller, and checkpoints."""
    result = check_sde(
        ("terms", "y0", "args", "ts", "level"),
        inputs=sde_inputs("tree"),
        solver=ra.Reversible(diffrax.Heun()),
        controller=diffrax.PIDController(rtol=1e-3, atol=1e-5),
        adjoint=ra.ReversibleAdjoint(checkpoint_every=7),
    )
    assert result == diffrax.RESULTS.event_occurred


@pytest.mark.slow
def test_sde_vmap():
    """`jax.vmap` over Brownian samples and ground levels: one solve stops at the
    event, one never triggers, one stops earlier; each matches
    `RecursiveCheckpointAdjoint`."""

    def loss(inputs, adjoint):
        _, y0, args, _, ts, level = inputs

        def one(key, level):
            terms, _, _, t0, _, _ = sde_inputs(key=key)
            sol = solve_projectile(
                (terms, y0, args, t0, ts, level),
                adjoint,
                controller=diffrax.ConstantStepSize(),
                t1=SDE_T1,
            )
            return event_loss(sol), sol.result

        keys = jr.split(jr.PRNGKey(3), 3)
        levels = jnp.stack([level, level - 100.0, level + 0.5])
        losses, results = jax.vmap(one)(keys, levels)
        return jnp.sum(losses * jnp.array([1.0, 0.5, 0.3])), results

    _, _, results = check_gradient_parity(
        loss,
        projectile_inputs(),
        names=NAMES,
        nonzero=("y0", "args", "ts", "level"),
        has_aux=True,
    )
    occurred = results == diffrax.RESULTS.event_occurred
    assert tuple(bool(x) for x in occurred) == (True, False, True)


@pytest.mark.slow
def test_vmap_rejected_last_step_is_nan():
    """Under `jax.vmap`, the root find runs for every solve of the batch once one has
    an event, on the last step each solve took, rejected or not. A solve that stops
    on `max_steps` (with `throw=False`) after a rejected step, here having accepted
    none, then depends on that rejected step, which `ReversibleAdjoint` does not
    reconstruct: its gradient must be NaN, not the gradient without that step's part
    (zero here), while `RecursiveCheckpointAdjoint`'s is finite and nonzero."""

    def loss(y0, a, adjoint):
        def one(level, dt0):
            return diffrax.diffeqsolve(
                diffrax.ODETerm(lambda t, y, a: -a * y * (1 + jnp.sin(5 * t))),
                ra.ReversibleHeun(),
                0.0,
                5.0,
                dt0,
                y0,
                args=a,
                stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-8),
                event=diffrax.Event(
                    lambda t, y, args, **kwargs: y - level, optx.Newton(1e-10, 1e-10)
                ),
                adjoint=adjoint,
                max_steps=4,
                throw=False,
            )

        sols = jax.vmap(one)(jnp.array([0.999, -1.0]), jnp.array([0.001, 0.5]))
        return sols.ys[1, -1], sols.stats

    grad = eqx.filter_jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
    want, stats = grad(1.0, 0.7, diffrax.RecursiveCheckpointAdjoint())
    got, _ = grad(1.0, 0.7, ra.ReversibleAdjoint())
    assert stats["num_accepted_steps"].tolist()[1] == 0
    assert stats["num_rejected_steps"].tolist()[1] > 0
    assert all(jnp.isfinite(x) and x != 0 for x in want)
    assert all(jnp.isnan(x) for x in got)
