"""`Reversible`: the McCallum–Foster wrapper of an explicit Runge–Kutta method. Exact
gradients with `ReversibleAdjoint`, SDEs, and refusals. (Its round trip, inverse and
order, the base method's, are in test_solvers.py.)"""

import warnings

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import reversible_adjoint as ra

from .helpers import (
    INPUT_NAMES,
    check_gradient_parity,
    check_solve_parity,
    problem_inputs,
    readout,
)

BASES = {
    "Heun": diffrax.Heun(),
    "Midpoint": diffrax.Midpoint(),
    "Bosh3": diffrax.Bosh3(),
    "Tsit5": diffrax.Tsit5(),
    "Dopri5": diffrax.Dopri5(),
}
MAX_STEPS = 256


#
# Gradients against `RecursiveCheckpointAdjoint`, same solver, same steps.
#


# PID tolerances per base, so that each solve takes tens of steps and rejects some.
PID_TOLERANCES = {
    "Heun": 1e-3,
    "Midpoint": 1e-3,
    "Bosh3": 1e-5,
    "Tsit5": 1e-7,
    "Dopri5": 1e-7,
}


def _controller(name, base):
    if name == "constant":
        return diffrax.ConstantStepSize()
    rtol = PID_TOLERANCES[base]
    return diffrax.PIDController(rtol=rtol, atol=0.01 * rtol)


def _check(base, controller_name, inputs):
    # Every input matters here; a zero reference would make the comparison vacuous.
    _, _, stats = check_solve_parity(
        inputs,
        ra.Reversible(BASES[base]),
        _controller(controller_name, base),
        max_steps=MAX_STEPS,
        # `checkpoints=MAX_STEPS` stores every step: the same gradient, compiled
        # faster.
        reference=diffrax.RecursiveCheckpointAdjoint(checkpoints=MAX_STEPS),
        nonzero=INPUT_NAMES,
        # An adaptive solve's `dt0` gradient can be a millionth of the others, and
        # round-off in those sets its error: about 1e-8 relative, between two
        # forward programs as between two adjoints.
        rtol={name: 1e-7 if name == "dt0" else 1e-10 for name in INPUT_NAMES},
    )
    return stats


# Compiling two gradients of a solve takes ~10 s of CPU per case, so the suite runs a
# cross-section: both controllers, both time directions, first-same-as-last bases
# (Bosh3, Tsit5) and not; `Tsit5` only in the slow suite (the suite has it, with
# adaptive steps, in `test_reversible_fused.py::test_dense_output_parity`).
CASES = [
    ("Heun", "constant", "forwards"),
    ("Bosh3", "pid", "backwards"),
    pytest.param("Tsit5", "pid", "forwards", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("base, controller_name, direction", CASES)
def test_all_inputs(base, controller_name, direction):
    """Pytree state, a parameter inside the term, a time-dependent field, gradients
    for `y0`, `args`, the term, `t0`, `t1`, `SaveAt(ts=...)` and `dt0`. Backwards in
    time (`t1 < t0`), diffrax wraps the terms in `WrapTerm`, and the base method steps
    both ways in the wrapped time."""
    dt0 = 0.1 if controller_name == "constant" else 0.5
    if direction == "forwards":
        inputs = problem_inputs(dt0=dt0)
    else:
        # The forward problem's save times, mirrored. (With some save times a
        # fifth-order solve hardly depends on `dt0`: its gradient is then ~1e-9, and
        # its relative error between adjoints is set by round-off in O(1) terms.)
        inputs = problem_inputs(
            t0=2.0, t1=0.0, ts=(2.0, 1.87, 1.5, 1.49, 1.0, 0.23, 0.0), dt0=-dt0
        )
    stats = _check(base, controller_name, inputs)
    if controller_name == "pid":
        assert stats["num_rejected_steps"] > 0
        assert stats["num_accepted_steps"] > 5


#
# SDEs.
#


@pytest.mark.parametrize(
    "base",
    [diffrax.Heun(), pytest.param(diffrax.Midpoint(), marks=pytest.mark.slow)],
    ids=["Heun", "Midpoint"],
)
def test_sde_parity(base):
    """A Stratonovich SDE on a `VirtualBrownianTree`: the control over a step is
    given to both base steps, and its cotangent reaches the parameters in `args` and
    in the term. Gradients for `y0`, `args`, the term and `SaveAt(ts=...)`.
    (`VirtualBrownianTree` cannot be differentiated with respect to time, so `t0`/`t1`
    gradients do not exist for either adjoint.)"""
    bm = diffrax.VirtualBrownianTree(0.0, 1.0, tol=1e-6, shape=(2,), key=jr.PRNGKey(1))

    def loss(inputs, adjoint):
        y0, args, scale, ts = inputs
        terms = diffrax.MultiTerm(
            diffrax.ODETerm(lambda t, y, a: -a[0] * y + jnp.sin(t) * y[::-1]),
            diffrax.ControlTerm(
                lambda t, y, a: jnp.diag(scale * a[1] * jnp.tanh(y)), bm
            ),
        )
        sol = diffrax.diffeqsolve(
            terms,
            ra.Reversible(base),
            0.0,
            1.0,
            0.05,
            y0,
            args=args,
            saveat=diffrax.SaveAt(ts=ts, t1=True),
            adjoint=adjoint,
        )
        return readout(sol.ys)

    inputs = (
        jnp.array([0.8, -0.5]),
        (jnp.array(0.6), jnp.array(0.4)),
        jnp.array(1.3),
        jnp.array([0.11, 0.5, 0.93]),
    )
    check_gradient_parity(loss, inputs, nonzero=range(4))


#
# The base step from its tableau, against diffrax's own.
#


def _base_step_terms(sde):
    def field(t, y, args):
        return {"q": args * jnp.sin(y["p"]) * t, "p": jnp.cos(t) - y["q"] ** 2}

    if not sde:
        return diffrax.ODETerm(field)
    shape = jax.ShapeDtypeStruct((2,), jnp.float64)
    bm = diffrax.VirtualBrownianTree(
        0.0, 1.0, tol=1e-6, shape={"q": shape, "p": shape}, key=jr.PRNGKey(2)
    )
    diffusion = lambda t, y, args: jax.tree.map(lambda x: jnp.diag(jnp.tanh(x)), y)
    return diffrax.MultiTerm(diffrax.ODETerm(field), diffrax.ControlTerm(diffusion, bm))


@pytest.mark.parametrize(
    "base, sde",
    [
        (diffrax.Heun(), True),
        (diffrax.Midpoint(), False),
        (diffrax.Ralston(), False),
        (diffrax.Bosh3(), False),
        (diffrax.Tsit5(), False),
        (diffrax.Dopri5(), False),
    ],
)
def test_base_step_is_diffraxs(base, sde):
    """`Reversible` steps its base method from the Butcher tableau (its stages in a
    `lax.scan`): the increment, error estimate and dense output of diffrax's own `step`
    (from a fresh `init`), forwards and backwards in time, to round-off. First-same-as-
    last (Bosh3, Tsit5, Dopri5) and solution-same-as-last (Tsit5, Dopri5) tableaux,
    and a Stratonovich SDE's control."""
    terms = _base_step_terms(sde)
    y = {"q": jnp.array([0.3, -0.2]), "p": jnp.array([1.1, 0.4])}
    args = jnp.array(0.7)
    for t_start, t_end in ((0.3, 0.55), (0.55, 0.3)):
        t_start, t_end = jnp.array(t_start), jnp.array(t_end)
        state = base.init(terms, t_start, t_end, y, args)
        y_end, want_error, want_dense, _, _ = base.step(
            terms, t_start, t_end, y, args, state, False
        )
        solver = ra.Reversible(base)
        t = (t_start, t_end, terms.contr(t_start, t_end))
        increment, passed, result = solver.evaluation(terms, t, y, args)
        error, dense = solver._error_and_dense_info(
            terms, t, y, args, increment, passed
        )
        assert result == diffrax.RESULTS.successful
        want_increment = jax.tree.map(lambda a, b: a - b, y_end, y)
        t_inside = 0.7 * t_start + 0.3 * t_end
        interpolate = lambda info: base.interpolation_cls(
            t0=t_start, t1=t_end, **info
        ).evaluate(t_inside)
        got = (increment, error, dense, interpolate(dense))
        want = (want_increment, want_error, want_dense, interpolate(want_dense))
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-15)


#
# Refusals.
#


@pytest.mark.parametrize(
    "base", [diffrax.Kvaerno5(), diffrax.ImplicitEuler(), diffrax.KenCarp4()]
)
def test_refuses_implicit(base):
    with pytest.raises(
        ValueError,
        match=r"explicit Runge–Kutta.*implicit.*Tsit5.*RecursiveCheckpointAdjoint",
    ):
        ra.Reversible(base)


@pytest.mark.parametrize(
    "base",
    [
        diffrax.SEA(),
        diffrax.EulerHeun(),
        diffrax.LeapfrogMidpoint(),
        diffrax.SemiImplicitEuler(),
    ],
)
def test_refuses_non_runge_kutta(base):
    with pytest.raises(
        ValueError, match=r"explicit Runge–Kutta.*Tsit5.*Reversible\(diffrax.Heun\(\)\)"
    ):
        ra.Reversible(base)


@pytest.mark.parametrize("base", [diffrax.ReversibleHeun(), ra.ReversibleHeun()])
def test_refuses_reversible(base):
    with pytest.raises(
        ValueError, match=r"already algebraically reversible.*ReversibleAdjoint"
    ):
        ra.Reversible(base)


@pytest.mark.parametrize("coupling", [0.0, -0.5, 1.5])
def test_refuses_bad_coupling(coupling):
    with pytest.raises(ValueError, match=r"coupling.*\(0, 1\]"):
        ra.Reversible(diffrax.Tsit5(), coupling=coupling)


def test_warns_for_small_coupling():
    with pytest.warns(UserWarning, match=r"coupling\^\(-N\)") as record:
        ra.Reversible(diffrax.Tsit5(), coupling=0.9)
    # Attributed to the line above, not to equinox's or jaxtyping's wrappers.
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ra.Reversible(diffrax.Tsit5())
        ra.Reversible(diffrax.Tsit5(), coupling=1)
        ra.Reversible(diffrax.Tsit5(), coupling=0.99)


@pytest.mark.parametrize("base", [diffrax.Euler(), diffrax.Tsit5()])
@pytest.mark.parametrize(
    "adjoint", [diffrax.RecursiveCheckpointAdjoint(), ra.ReversibleAdjoint()]
)
def test_refuses_non_stratonovich_base_for_sde(base, adjoint):
    bm = diffrax.VirtualBrownianTree(0.0, 1.0, tol=1e-3, shape=(2,), key=jr.PRNGKey(0))
    terms = diffrax.MultiTerm(
        diffrax.ODETerm(lambda t, y, args: -y),
        diffrax.ControlTerm(lambda t, y, args: 0.1 * y, bm),
    )
    name = type(base).__name__
    with pytest.raises(
        ValueError,
        match=rf"Reversible\({name}\(\)\).*SDE.*Stratonovich.*Heun.*Midpoint",
    ):
        diffrax.diffeqsolve(
            terms, ra.Reversible(base), 0.0, 1.0, 0.1, jnp.ones(2), adjoint=adjoint
        )
