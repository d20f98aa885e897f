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


def grads_of_every_input(
    solver, controller, adjoint, t0, t1, dt0, ts, *, steps, max_steps
):
    """Gradients of a solve of `make_problem` with respect to every input: the term,
    `y0`, `args`, `t0`, `t1`, `SaveAt(ts)`, `dt0` and the grid of a `StepTo`, saving
    `ts`, every `steps`-th step and `t1`."""
    grid = controller if isinstance(controller, diffrax.StepTo) else None

    @eqx.filter_jit
    @eqx.filter_grad
    def grad(inputs):
        term, y0, args, t0, t1, ts, dt0, grid = inputs
        sol = diffrax.diffeqsolve(
            term,
            solver,
            t0,
            t1,
            dt0,
            y0,
            args=args,
            saveat=diffrax.SaveAt(ts=ts, steps=steps, t1=True),
            stepsize_controller=controller if grid is None else grid,
            adjoint=adjoint,
            max_steps=max_steps,
        )
        return readout(sol.ys) + 0.3 * readout(sol.ts)

    term, y0, args = make_problem()
    dt0 = None if dt0 is None else jnp.array(dt0)
    return grad((term, y0, args, t0, t1, ts, dt0, grid))


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
    """Occurrences of the primitive `name` in `jaxpr`, sub-jaxprs included."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == name
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += count_primitives(sub, name)
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


STEP_TO_INTERIOR = jnp.linspace(0.3, 1.7, 9) ** 1.2


def solve_constant_or_step_to(
    inputs,
    solver,
    controller_name,
    adjoint=diffrax.RecursiveCheckpointAdjoint(),
    grid=STEP_TO_INTERIOR,
):
    """Solves with `SaveAt(ts=..., t1=True)` and `SaveAt(steps=True)` together.
    `inputs = (terms, y0, args, t0, t1, ts, dt0)`; `controller_name` is `"constant"`
    (`ConstantStepSize` with `dt0`) or `"stepto"` (`StepTo` on `t0`, `grid`, `t1`)."""
    terms, y0, args, t0, t1, ts, dt0 = inputs
    if controller_name == "constant":
        controller = diffrax.ConstantStepSize()
    else:
        controller, dt0 = (
            diffrax.StepTo(jnp.concatenate([t0[None], grid, t1[None]])),
            None,
        )
    saveat = diffrax.SaveAt(
        subs=[diffrax.SubSaveAt(ts=ts, t1=True), diffrax.SubSaveAt(steps=True)]
    )
    return diffrax.diffeqsolve(
        terms,
        solver,
        t0,
        t1,
        dt0,
        y0,
        args=args,
        saveat=saveat,
        stepsize_controller=controller,
        adjoint=adjoint,
        max_steps=64,
    )


def check_inverse_is_step_backwards(solver):
    """For schemes whose inverse is the scheme itself run from `t1` to `t0`: a step
    back undoes a step forward, and `backward_step` gives the same, to round-off."""
    term, y0, args = make_problem()
    state0 = solver.init(term, 0.0, 0.1, y0, args)
    y1, _, _, state1, _ = solver.step(term, 0.0, 0.1, y0, args, state0, False)
    y_back, _, _, state_back, _ = solver.step(term, 0.1, 0.0, y1, args, state1, False)
    y_inv, state_inv = solver.backward_step(term, 0.0, 0.1, y1, args, state1, False)
    assert max_relative_error((y_back, state_back), (y_inv, state_inv)) < 1e-14
    assert max_relative_error((y_inv, state_inv), (y0, state0)) < 1e-14
    assert jtu.tree_structure(state_inv) == jtu.tree_structure(state0)


def observed_orders(solver, ns):
    """log2 of the ratio of global errors between successive halvings of the step (`n`
    steps for each `n` in `ns`), on y' = t·[[0, −1], [1, 0]]·y over [0, 2], whose
    solution is y = (cos(t²/2), sin(t²/2))."""
    term = diffrax.ODETerm(lambda t, y, args: t * jnp.stack([-y[1], y[0]]))

    def exact(t):
        return jnp.array([jnp.cos(t**2 / 2), jnp.sin(t**2 / 2)])

    @jax.jit
    def error(dt0):
        sol = diffrax.diffeqsolve(
            term, solver, 0.0, 2.0, dt0, exact(0.0), max_steps=max(ns)
        )
        return jnp.max(jnp.abs(sol.ys[-1] - exact(2.0)))

    errors = [error(2.0 / n) for n in ns]
    return [float(jnp.log2(a / b)) for a, b in zip(errors[:-1], errors[1:])]


def _readout_ys_ts(sol):
    return readout(sol.ys) + 0.3 * readout(sol.ts)


def check_parity_constant_or_step_to(
    inputs, solver, controller_name, names, rtol, adjoint=ra.ReversibleAdjoint()
):
    """Gradients of `solve_constant_or_step_to` with respect to every input (named
    `names`), from `adjoint` against `RecursiveCheckpointAdjoint`."""

    @eqx.filter_jit
    @eqx.filter_grad
    def grad(inputs, adjoint):
        return _readout_ys_ts(
            solve_constant_or_step_to(inputs, solver, controller_name, adjoint)
        )

    want = grad(inputs, diffrax.RecursiveCheckpointAdjoint())
    got = grad(inputs, adjoint)
    if controller_name == "stepto":
        assert jnp.all(want[-1] == 0) and jnp.all(got[-1] == 0)  # `dt0` is unused
        want, got = want[:-1], got[:-1]
    assert_nonzero(want)
    errors = {name: max_relative_error(g, w) for name, g, w in zip(names, got, want)}
    assert max(errors.values()) < rtol, errors


def check_step_to_grid_gradient(inputs, solver, rtol):
    """Gradient with respect to the interior times of the `StepTo` grid of
    `solve_constant_or_step_to`, from `ReversibleAdjoint` against
    `RecursiveCheckpointAdjoint`."""

    @eqx.filter_jit
    @eqx.filter_grad
    def grad(grid, adjoint):
        return _readout_ys_ts(
            solve_constant_or_step_to(inputs, solver, "stepto", adjoint, grid)
        )

    want = grad(STEP_TO_INTERIOR, diffrax.RecursiveCheckpointAdjoint())
    got = grad(STEP_TO_INTERIOR, ra.ReversibleAdjoint())
    assert_nonzero(want)
    assert max_relative_error(got, want) < rtol
