"""Shared problems and comparisons for the tests."""

import diffrax
import equinox as eqx
import jax
import jax.extend
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu

import reversible_adjoint as ra


class Field(eqx.Module):
    """A time-dependent vector field on a pytree state, with a parameter inside the
    term (`W`) and parameters in `args`."""

    W: jax.Array

    def __call__(self, t, y, args):
        a, b = args
        x, v = y["x"], y["v"]
        return {
            "x": v + jnp.sin(t) * jnp.tanh(self.W @ x),
            "v": -a * x - b * jnp.cos(t) * v,
        }


def make_problem(dtype=jnp.float64):
    W = jnp.array([[0.3, -0.8], [0.5, 0.2]], dtype=dtype)
    y0 = {
        "x": jnp.array([1.0, 0.5], dtype=dtype),
        "v": jnp.array([0.3, -0.2], dtype=dtype),
    }
    args = (jnp.array(0.7, dtype=dtype), jnp.array(0.4, dtype=dtype))
    return diffrax.ODETerm(Field(W)), y0, args


class Velocity(eqx.Module):
    """dq/dt = M(t) p: time-dependent, with a parameter (`M`) inside the term."""

    M: jax.Array

    def __call__(self, t, p, args):
        scale = 1 + 0.3 * jnp.sin(t)
        return {"u": scale * (self.M @ p["u"]), "w": scale * p["w"]}


def force(t, q, args):
    """dp/dt = −a q − b cos(t) tanh(q)."""
    a, b = args
    return jtu.tree_map(lambda x: -a * x - b * jnp.cos(t) * jnp.tanh(x), q)


def make_split_problem():
    """`make_problem` for a partitioned solver (`SemiImplicitEuler`): a pair of terms,
    `(dq/dt = M(t) p, dp/dt = −a q − b cos(t) tanh(q))`, on a state `(q, p)` of two
    pytrees. (diffrax checks each term against its own half of the state, so `q` and
    `p` share a structure.)"""
    M = jnp.array([[1.0, 0.2], [0.2, 0.7]])
    terms = (diffrax.ODETerm(Velocity(M)), diffrax.ODETerm(force))
    q0 = {"u": jnp.array([1.0, 0.5]), "w": jnp.array(-0.4)}
    p0 = {"u": jnp.array([0.3, -0.2]), "w": jnp.array(0.6)}
    args = (jnp.array(0.7), jnp.array(0.4))
    return terms, (q0, p0), args


def readout(ys):
    """A nonlinear scalar loss of the saved values (every leaf, every entry)."""
    leaves = jtu.tree_leaves(ys)
    return sum(
        jnp.sum(jnp.sin(1.0 + 0.1 * jnp.arange(x.size).reshape(x.shape)) * x**2)
        for x in leaves
    )


def max_relative_error(got, want):
    """Largest, over leaves, of max|got - want| / max|want|. Leaves where `want` is
    zero are compared absolutely."""
    errors = []
    for g, w in zip(jtu.tree_leaves(got), jtu.tree_leaves(want), strict=True):
        scale = jnp.max(jnp.abs(w))
        diff = jnp.max(jnp.abs(g - w))
        errors.append(float(diff / scale) if scale > 0 else float(diff))
    return max(errors)


def assert_nonzero(tree):
    for leaf in jtu.tree_leaves(tree):
        assert jnp.max(jnp.abs(leaf)) > 0, "reference gradient is zero: test is vacuous"


def mlp_term(key, size=3, dtype=jnp.float64):
    mlp = eqx.nn.MLP(
        size + 1, size, width_size=8, depth=2, activation=jnp.tanh, key=key, dtype=dtype
    )

    class MLPField(eqx.Module):
        mlp: eqx.nn.MLP

        def __call__(self, t, y, args):
            return args * self.mlp(jnp.concatenate([jnp.atleast_1d(t), y]))

    return diffrax.ODETerm(MLPField(mlp))


def random_key(seed=0):
    return jr.PRNGKey(seed)


def round_trip_error_on_grid(solver, terms, ts, y0, args):
    """`reversible_adjoint.round_trip_error` of `solver` stepping over the grid `ts`
    (`StepTo(ts)`, one step per interval): forward with `diffeqsolve`, then every step
    undone with `backward_step`. The relative reconstruction error, as a float."""
    error = ra.round_trip_error(
        terms,
        solver,
        ts[0],
        ts[-1],
        None,
        y0,
        args,
        stepsize_controller=diffrax.StepTo(ts),
        max_steps=len(ts) - 1,
    )
    return float(error)


def solve_on_grid(solver, terms, ts, y0, args):
    """The forward solve of `round_trip_error_on_grid`, saving `y1` and the final
    solver state."""
    return diffrax.diffeqsolve(
        terms,
        solver,
        ts[0],
        ts[-1],
        None,
        y0,
        args,
        saveat=diffrax.SaveAt(t1=True, solver_state=True),
        stepsize_controller=diffrax.StepTo(ts),
        max_steps=len(ts) - 1,
    )


def count_primitives(jaxpr, name):
    """Occurrences of the primitive `name` in `jaxpr`, sub-jaxprs included, those in
    the body of a `scan` (as `Reversible` makes its base method's stages) once per
    iteration: how many times it runs, where no other loop holds it."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == name
        iterations = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += iterations * count_primitives(sub, name)
    return count


def sinh_vector_field(t, y, args):
    """A vector field whose evaluations are marked in a jaxpr by one `sinh` each (the
    derivative being `cosh`)."""
    return jnp.sinh(args * y[::-1]) * jnp.cos(t) - 0.1 * y


def sinh_loss(solver, adjoint, y0, args):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(sinh_vector_field),
        solver,
        0.0,
        2.0,
        0.05,
        y0,
        args=args,
        saveat=diffrax.SaveAt(t1=True),
        adjoint=adjoint,
    )
    return readout(sol.ys)


def backward_loop_evaluations(solver):
    """Vector-field evaluations per backward step of `ReversibleAdjoint`: the `sinh`s
    in the body of the innermost while loop that also differentiates them (`cosh`;
    the forward loop does not; the loop over stretches holds the loop over steps)."""
    y0, args = jnp.array([0.4, -0.3, 0.2]), jnp.array(0.8)
    jaxpr = jax.make_jaxpr(jax.grad(sinh_loss, argnums=(2, 3)), static_argnums=(0, 1))(
        solver, ra.ReversibleAdjoint(), y0, args
    ).jaxpr
    bodies = []

    def find(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "while":
                bodies.append(eqn.params["body_jaxpr"].jaxpr)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                find(sub)

    find(jaxpr)

    def differentiates(body):
        return count_primitives(body, "cosh") > 0

    def holds_another(body):
        inner = [b for b in bodies if b is not body and differentiates(b)]
        return any(_contains(body, b) for b in inner)

    backward = [b for b in bodies if differentiates(b) and not holds_another(b)]
    assert len(backward) == 1
    return count_primitives(backward[0], "sinh")


def _contains(jaxpr, sub):
    for eqn in jaxpr.eqns:
        for inner in jax.extend.core.jaxprs_in_params(eqn.params):
            if inner is sub or _contains(inner, sub):
                return True
    return False


def check_inverse_is_step_backwards(solver):
    """For schemes whose inverse is the scheme itself run from `t1` to `t0`: a step
    back undoes a step forward, and `backward_step` gives the same, to round-off."""
    term, y0, args = make_problem()
    state0 = solver.init(term, 0.0, 0.1, y0, args)
    y1, _, _, state1, _ = solver.step(term, 0.0, 0.1, y0, args, state0, False)
    y_back, _, _, state_back, _ = solver.step(term, 0.1, 0.0, y1, args, state1, False)
    y_inv, state_inv = solver.backward_step(
        term, 0.0, 0.1, y1, args, state1, False, t_previous=0.0
    )
    assert max_relative_error((y_back, state_back), (y_inv, state_inv)) < 1e-14
    assert max_relative_error((y_inv, state_inv), (y0, state0)) < 1e-14
    assert jtu.tree_structure(state_inv) == jtu.tree_structure(state0)


def observed_orders(solver, ns, split=False):
    """log2 of the ratio of global errors between successive halvings of the step (`n`
    steps for each `n` in `ns`), on y' = t·[[0, −1], [1, 0]]·y over [0, 2], whose
    solution is y = (cos(t²/2), sin(t²/2)). With `split`, as a pair of terms on
    `(y₁, y₂)` for a partitioned solver."""
    if split:
        term = (
            diffrax.ODETerm(lambda t, y2, args: -t * y2),
            diffrax.ODETerm(lambda t, y1, args: t * y1),
        )
    else:
        term = diffrax.ODETerm(lambda t, y, args: t * jnp.stack([-y[1], y[0]]))

    def exact(t):
        y = jnp.array([jnp.cos(t**2 / 2), jnp.sin(t**2 / 2)])
        return (y[0], y[1]) if split else y

    @jax.jit
    def error(dt0):
        sol = diffrax.diffeqsolve(
            term, solver, 0.0, 2.0, dt0, exact(0.0), max_steps=max(ns)
        )
        got = jnp.stack([y[-1] for y in jtu.tree_leaves(sol.ys)])
        return jnp.max(jnp.abs(got - jnp.stack(jtu.tree_leaves(exact(2.0)))))

    errors = [error(2.0 / n) for n in ns]
    return [float(jnp.log2(a / b)) for a, b in zip(errors[:-1], errors[1:])]


#
# Gradient parity with `diffrax.RecursiveCheckpointAdjoint`.
#

RTOL = 1e-8
INPUT_NAMES = ("terms", "y0", "args", "t0", "t1", "ts", "dt0")
SAVE_TIMES = (0.0, 0.13, 0.5, 0.51, 1.0, 1.77, 2.0)
STEP_TO_INTERIOR = jnp.linspace(0.3, 1.7, 9) ** 1.2
# The reference: `RecursiveCheckpointAdjoint` storing every step (up to diffrax's
# default `max_steps`; equinox caps `checkpoints` at `max_steps`). The same gradient
# as with its default checkpoints, compiled faster.
STORE_EVERY_STEP = diffrax.RecursiveCheckpointAdjoint(checkpoints=4096)


def check_gradient_parity(
    loss,
    inputs,
    *,
    rtol=RTOL,
    adjoint=ra.ReversibleAdjoint(),
    reference=STORE_EVERY_STEP,
    names=None,
    nonzero=(),
    has_aux=False,
):
    """The gradient of `loss(inputs, adjoint)` with respect to `inputs` (every array
    in it), from `adjoint` against `reference`, compiled once each.

    Asserts that the two gradients have the same structure (the same inputs without a
    gradient), that the reference is not zero everywhere, nor on any part named in
    `nonzero` (a comparison with zero would be vacuous), and that the largest
    relative error (`max_relative_error`) of each part is under `rtol` (a number, or
    one per part). `nonzero` is a sequence of names or a function of the reference
    gradient. `inputs` is a tuple whose parts are named by `names` (default:
    their positions). Returns `(got, want)`, and the reference's auxiliary output with
    `has_aux`."""
    grad = eqx.filter_jit(eqx.filter_grad(loss, has_aux=has_aux))
    want, got = grad(inputs, reference), grad(inputs, adjoint)
    if has_aux:
        (want, aux), (got, _) = want, got
    names = list(range(len(inputs))) if names is None else list(names)
    parts = dict(zip(names, zip(got, want, strict=True), strict=True))
    assert jtu.tree_structure(got) == jtu.tree_structure(want)
    assert any(jnp.any(x != 0) for x in jtu.tree_leaves(want)), "zero gradient"
    if callable(nonzero):
        assert_nonzero(nonzero(want))
    else:
        assert_nonzero([parts[name][1] for name in nonzero])
    errors = {
        name: max_relative_error(g, w)
        for name, (g, w) in parts.items()
        if jtu.tree_leaves(w)
    }
    for name, error in errors.items():
        tol = rtol[name] if isinstance(rtol, dict) else rtol
        assert error < tol, (name, errors)
    return (got, want, aux) if has_aux else (got, want)


def problem_inputs(t0=0.0, t1=2.0, ts=SAVE_TIMES, dt0=0.05, problem=None):
    """`(terms, y0, args, t0, t1, ts, dt0)` of `make_problem` (or of `problem`, a
    `(terms, y0, args)`), the times as arrays."""
    terms, y0, args = make_problem() if problem is None else problem
    times = tuple(None if x is None else jnp.asarray(x) for x in (t0, t1, ts, dt0))
    return (terms, y0, args, *times)


def step_to(t0, t1, interior=STEP_TO_INTERIOR):
    """`StepTo` on `t0`, `interior`, `t1`: a non-uniform grid that moves with `t0` and
    `t1`."""
    return diffrax.StepTo(jnp.concatenate([t0[None], interior, t1[None]]))


def save_ts_t1(ts):
    return diffrax.SaveAt(ts=ts, t1=True)


def solve(
    inputs,
    solver,
    adjoint,
    controller=diffrax.ConstantStepSize(),
    saveat=save_ts_t1,
    max_steps=512,
):
    """`diffeqsolve` of `inputs = (terms, y0, args, t0, t1, ts, dt0, *rest)`, saving
    `saveat(ts)`. `controller` is a step size controller, or a function of
    `(t0, t1, *rest)` that makes one (for a `StepTo` grid that is differentiated);
    with a `StepTo`, `dt0` is not used."""
    terms, y0, args, t0, t1, ts, dt0, *rest = inputs
    if not isinstance(controller, diffrax.AbstractStepSizeController):
        controller = controller(t0, t1, *rest)
    if isinstance(controller, diffrax.StepTo):
        dt0 = None
    return diffrax.diffeqsolve(
        terms,
        solver,
        t0,
        t1,
        dt0,
        y0,
        args=args,
        saveat=saveat(ts),
        stepsize_controller=controller,
        adjoint=adjoint,
        max_steps=max_steps,
    )


def check_solve_parity(
    inputs,
    solver,
    controller=diffrax.ConstantStepSize(),
    saveat=save_ts_t1,
    *,
    max_steps=512,
    names=INPUT_NAMES,
    **kwargs,
):
    """`check_gradient_parity` of a nonlinear loss of the values, times and solver
    state saved by `solve`, with respect to every input (`names` default to
    `INPUT_NAMES`; name any further inputs). Returns `(got, want, stats)`, `stats`
    those of the reference solve."""

    def loss(inputs, adjoint):
        sol = solve(inputs, solver, adjoint, controller, saveat, max_steps)
        value = readout(sol.ys) + 0.3 * readout(sol.ts) + readout(sol.solver_state)
        return value, sol.stats

    return check_gradient_parity(loss, inputs, names=names, has_aux=True, **kwargs)


def save_ts_t1_and_steps(ts):
    return diffrax.SaveAt(
        subs=[diffrax.SubSaveAt(ts=ts, t1=True), diffrax.SubSaveAt(steps=True)]
    )


def check_parity_constant_or_step_to(inputs, solver, controller_name, **kwargs):
    """`check_solve_parity` saving `ts`, `t1` and every step, with `ConstantStepSize`
    (`controller_name="constant"`) or on a non-uniform `StepTo` grid (`"stepto"`),
    whose interior times are then an input too. Every input must have a nonzero
    gradient, but `dt0`, unused on a `StepTo` grid."""
    if controller_name == "stepto":
        inputs = (*inputs, STEP_TO_INTERIOR)
        kwargs.update(controller=step_to, names=(*INPUT_NAMES, "grid"))
    names = kwargs.get("names", INPUT_NAMES)
    nonzero = [name for name in names if name != "dt0" or controller_name != "stepto"]
    return check_solve_parity(
        inputs,
        solver,
        saveat=save_ts_t1_and_steps,
        max_steps=64,
        nonzero=nonzero,
        **kwargs,
    )


def check_parity_of_every_input(
    solver, controller, adjoint, t0, t1, dt0, ts, *, steps, max_steps, **kwargs
):
    """`check_solve_parity` of a solve of `make_problem` saving `ts`, every
    `steps`-th step and `t1`, with respect to every input: the term, `y0`, `args`,
    `t0`, `t1`, `SaveAt(ts)`, `dt0` and, for a `StepTo` controller, its grid (then an
    input, named `"grid"`)."""
    inputs, names = problem_inputs(t0, t1, ts, dt0), INPUT_NAMES
    if isinstance(controller, diffrax.StepTo):
        inputs, names = (*inputs, controller), (*INPUT_NAMES, "grid")
        controller = lambda t0, t1, grid: grid
    return check_solve_parity(
        inputs,
        solver,
        controller,
        lambda ts: diffrax.SaveAt(ts=ts, steps=steps, t1=True),
        max_steps=max_steps,
        names=names,
        adjoint=adjoint,
        **kwargs,
    )
