"""Unsupported options raise at trace time, with a message naming the option and the
alternative."""

import math
import re

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import pytest

import reversible_adjoint as ra
from reversible_adjoint._diffrax_internals import EVENTS_SINCE, release

from .helpers import make_problem

# All of them: part of the quick check of an install (`-m quick`).
pytestmark = pytest.mark.quick


def _solve(**kwargs):
    term, y0, args = make_problem()
    options = dict(
        terms=term,
        solver=ra.ReversibleHeun(),
        t0=0.0,
        t1=1.0,
        dt0=0.1,
        y0=y0,
        args=args,
        adjoint=ra.ReversibleAdjoint(),
    )
    options.update(kwargs)
    return diffrax.diffeqsolve(**options)


# The solvers a refusal advises, as it writes them: `reversible_adjoint.Heun()`,
# `reversible_adjoint.Reversible(diffrax.Heun())`, `diffrax.ReversibleHeun()`.
_ADVISED = re.compile(
    r"`((?:reversible_adjoint|diffrax)\.\w+\((?:diffrax\.\w+\(\))?\))`"
)


def _advised(message):
    """The solvers named in `message`, constructed."""
    namespace = {"reversible_adjoint": ra, "diffrax": diffrax}
    return [eval(spelled, namespace) for spelled in _ADVISED.findall(message)]


def _sde_problem():
    bm = diffrax.VirtualBrownianTree(0.0, 1.0, 1e-3, (2,), key=jr.PRNGKey(0))
    terms = diffrax.MultiTerm(
        diffrax.ODETerm(lambda t, y, args: -y),
        diffrax.ControlTerm(lambda t, y, args: lx.DiagonalLinearOperator(0.1 * y), bm),
    )
    return dict(terms=terms, y0=jnp.ones(2), args=None)


def test_non_reversible_solver():
    """An explicit Runge-Kutta method: wrapping it is advised, and works."""
    with pytest.raises(
        ValueError,
        match=r"reversible solver.*Tsit5.*`reversible_adjoint\.Reversible\("
        r"diffrax\.Tsit5\(\)\)`.*RecursiveCheckpointAdjoint",
    ) as info:
        _solve(solver=diffrax.Tsit5())
    advised = _advised(str(info.value))
    assert ra.Reversible(diffrax.Tsit5()) in advised
    for solver in advised:
        if isinstance(solver, ra.SemiImplicitEuler | diffrax.SemiImplicitEuler):
            continue  # advised for separable Hamiltonians only, which this is not
        _solve(solver=solver)


def test_implicit_solver():
    """An implicit solver: no `Reversible(...)` of it (which is refused too), but the
    solver itself with `RecursiveCheckpointAdjoint`."""
    pid = diffrax.PIDController(rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match=r"`Kvaerno5`, an implicit solver") as info:
        _solve(solver=diffrax.Kvaerno5(), stepsize_controller=pid)
    message = str(info.value)
    assert (
        "keep `Kvaerno5` with `adjoint=diffrax.RecursiveCheckpointAdjoint()`" in message
    )
    assert not any(isinstance(s, ra.Reversible) for s in _advised(message))
    with pytest.raises(ValueError, match=r"implicit"):
        ra.Reversible(diffrax.Kvaerno5())
    _solve(
        solver=diffrax.Kvaerno5(),
        stepsize_controller=pid,
        adjoint=diffrax.RecursiveCheckpointAdjoint(),
    )


def test_ito_solver_on_an_sde():
    """`Euler` on an SDE (an Itô solver): the Stratonovich form and the solvers that
    take it, each of which works on that SDE, and no `Reversible(Euler())`, which
    cannot solve it."""
    sde = _sde_problem()
    with pytest.raises(
        ValueError, match=r"`Euler`.*Itô.*Stratonovich form.*ReversibleHeun"
    ) as info:
        _solve(solver=diffrax.Euler(), **sde)
    advised = _advised(str(info.value))
    assert advised and ra.Reversible(diffrax.Euler()) not in advised
    for solver in advised:
        _solve(solver=solver, **sde)
    with pytest.raises(ValueError, match=r"cannot solve an SDE"):
        _solve(solver=ra.Reversible(diffrax.Euler()), **sde)


def test_stratonovich_solver_on_an_sde():
    """`Heun` on an SDE: wrapping it is advised, and works on that SDE."""
    sde = _sde_problem()
    with pytest.raises(ValueError, match=r"`Heun`") as info:
        _solve(solver=diffrax.Heun(), **sde)
    advised = _advised(str(info.value))
    assert ra.Reversible(diffrax.Heun()) in advised
    for solver in advised:
        _solve(solver=solver, **sde)


def test_max_steps_none_constant_steps():
    """With constant steps: the number of steps to pass, which is enough (and one
    fewer is not), and no talk of recording adaptive steps."""
    t0, t1, dt0 = 0.0, 1.0, 0.3
    with pytest.raises(
        ValueError, match=r"max_steps=\.\.\.\)` to be an integer"
    ) as info:
        _solve(t0=t0, t1=t1, dt0=dt0, max_steps=None)
    message = str(info.value)
    formula = re.search(r"`max_steps=(math\.ceil\(.*?\))`", message).group(1)
    steps = eval(formula, {"math": math, "t0": t0, "t1": t1, "dt0": dt0})
    assert "Nothing is stored per step" in message and "adaptive" not in message
    sol = _solve(t0=t0, t1=t1, dt0=dt0, max_steps=steps)
    assert int(sol.stats["num_steps"]) == steps
    with pytest.raises(Exception, match=r"max_steps"):
        jax.block_until_ready(_solve(t0=t0, t1=t1, dt0=dt0, max_steps=steps - 1).ys)


def test_max_steps_none_step_to():
    """With `StepTo`: the number of steps itself."""
    ts = jnp.linspace(0.0, 1.0, 7)
    controller = diffrax.StepTo(ts=ts)
    with pytest.raises(ValueError, match=rf"`max_steps={len(ts) - 1}`"):
        _solve(stepsize_controller=controller, dt0=None, max_steps=None)
    sol = _solve(stepsize_controller=controller, dt0=None, max_steps=len(ts) - 1)
    assert int(sol.stats["num_steps"]) == len(ts) - 1


def test_max_steps_none_adaptive_steps():
    """With an adaptive controller: why a bound is needed, and one to start from."""
    pid = diffrax.PIDController(rtol=1e-3, atol=1e-6)
    with pytest.raises(
        ValueError,
        match=r"adaptive step size controller \(`PIDController`\) it records the time "
        r"of every accepted step.*`max_steps=4096`.*num_steps",
    ):
        _solve(stepsize_controller=pid, max_steps=None)


def test_dense():
    with pytest.raises(
        NotImplementedError,
        match=r"SaveAt\(dense=True\)`.*O\(number of steps\).*SaveAt\(ts=\.\.\.\)",
    ):
        _solve(saveat=diffrax.SaveAt(dense=True))


def test_events_need_diffrax_0_7_2():
    """Events are supported from diffrax 0.7.2 (`tests/test_events.py`), and refused
    before it, naming the upgrade and the alternative."""
    from reversible_adjoint._diffrax_internals import _RELEASE

    event = diffrax.Event(lambda t, y, args, **kwargs: t > 0.5)
    if _RELEASE < (0, 7, 2):
        with pytest.raises(
            NotImplementedError,
            match=r"events with diffrax 0\.7\.2 and later.*RecursiveCheckpointAdjoint",
        ):
            _solve(event=event)
    else:
        sol = _solve(event=event)
        assert 0.5 < float(sol.ts[-1]) < 1.0


def test_unsafe_brownian_path():
    term, y0, args = make_problem()
    x0 = jnp.ones(2)
    bm = diffrax.UnsafeBrownianPath(shape=(2,), key=jr.PRNGKey(0))
    terms = diffrax.MultiTerm(
        diffrax.ODETerm(lambda t, y, args: -y),
        diffrax.ControlTerm(lambda t, y, args: 0.1 * y, bm),
    )
    with pytest.raises(ValueError, match=r"UnsafeBrownianPath.*VirtualBrownianTree"):
        _solve(terms=terms, y0=x0, args=None)


@pytest.mark.skipif(
    release(diffrax.__version__) < EVENTS_SINCE,
    reason="events need diffrax 0.7.2 or later (test_events_need_diffrax_0_7_2)",
)
def test_sde_event_refusals():
    """Events on SDEs are supported (`tests/test_events.py`); what is refused for an
    SDE is refused with an event too."""
    bm = diffrax.UnsafeBrownianPath(shape=(2,), key=jr.PRNGKey(0))
    terms = diffrax.MultiTerm(
        diffrax.ODETerm(lambda t, y, args: -y),
        diffrax.ControlTerm(lambda t, y, args: 0.1 * y, bm),
    )
    event = diffrax.Event(lambda t, y, args, **kwargs: y[0] - 0.5)
    with pytest.raises(ValueError, match=r"UnsafeBrownianPath.*VirtualBrownianTree"):
        _solve(terms=terms, y0=jnp.ones(2), args=None, event=event)


def test_jump_ts():
    controller = diffrax.PIDController(rtol=1e-3, atol=1e-6, jump_ts=[0.5])
    with pytest.raises(
        NotImplementedError, match=r"jump_ts.*step_ts.*RecursiveCheckpointAdjoint"
    ):
        _solve(stepsize_controller=controller)


def test_made_jump():
    with pytest.raises(NotImplementedError, match=r"made_jump"):
        _solve(made_jump=True)


def test_differentiating_controller_parameters():
    """Only `StepTo(ts=...)` among controller parameters is differentiable; others
    raise instead of silently returning a zero gradient."""

    def loss(dtmax):
        controller = diffrax.PIDController(rtol=1e-3, atol=1e-6, dtmax=dtmax)
        return jnp.sum(_solve(stepsize_controller=controller).ys["x"])

    with pytest.raises(
        Exception, match=r"step size controllers.*RecursiveCheckpointAdjoint"
    ):
        jax.grad(loss)(0.05)


def test_solver_without_inverse():
    class EulerWithoutInverse(ra.AbstractReversibleSolver, diffrax.Euler):
        pass

    with pytest.raises(NotImplementedError, match=r"must implement `backward_step`"):
        jax.grad(
            lambda y0: jnp.sum(_solve(solver=EulerWithoutInverse(), y0=y0).ys["x"])
        )(make_problem()[1])


def test_refusal_lists_every_solver():
    with pytest.raises(ValueError) as info:
        _solve(solver=diffrax.Tsit5())
    for name in [
        "ReversibleHeun",
        "AsynchronousLeapfrog",
        "Reversible(",
        "LeapfrogMidpoint",
        "SemiImplicitEuler",
    ]:
        assert f"reversible_adjoint.{name}" in str(info.value)


@pytest.mark.parametrize("solver", [ra.LeapfrogMidpoint(), diffrax.LeapfrogMidpoint()])
def test_leapfrog_midpoint_sde(solver):
    bm = diffrax.VirtualBrownianTree(0.0, 1.0, 1e-3, (2,), key=jr.PRNGKey(0))
    terms = diffrax.MultiTerm(
        diffrax.ODETerm(lambda t, y, args: -y),
        diffrax.ControlTerm(lambda t, y, args: 0.1 * y, bm),
    )
    with pytest.raises(
        NotImplementedError,
        match=r"LeapfrogMidpoint.*SDE.*ReversibleHeun.*RecursiveCheckpointAdjoint",
    ):
        jax.grad(
            lambda y0: jnp.sum(_solve(terms=terms, solver=solver, y0=y0, args=None).ys)
        )(jnp.ones(2))


def test_diffrax_version_is_checked():
    """A diffrax older than 0.7.0 lays out its saved values differently, which would
    give wrong gradients: refused. 0.7.0 to 0.7.2 are tested: silent. A newer one is
    untested: a warning."""
    from reversible_adjoint._diffrax_internals import check_version

    for tested in ("0.7.0", "0.7.1", "0.7.2", "0.7.2.post1"):
        check_version(tested)
    for old in ("0.6.2", "0.6.0", "0.5.1"):
        with pytest.raises(ImportError, match=r"diffrax>=0\.7\.0,<0\.8"):
            check_version(old)
    for new in ("0.7.3", "0.7.3rc1", "0.8.0"):
        with pytest.warns(UserWarning, match=r"tested with diffrax 0\.7\.0 to 0\.7\.2"):
            check_version(new)


def test_diffrax_version_dispatch():
    """What `_diffrax_internals` hands the backward pass follows the installed diffrax:
    `SaveAt(steps=3)` saves every step in 0.7.0 (`steps` is a bool there) and every
    third step from 0.7.1; 0.7.0 rounds `tnext` to `t1` within `1e-10` (float64),
    later versions within 100 ULPs. Each is checked against diffrax's own solve."""
    from reversible_adjoint._diffrax_internals import (
        _RELEASE,
        clip_floor,
        clip_to_end,
        release,
        save_every,
    )
    from reversible_adjoint._save_layout import SaveLayout

    assert _RELEASE == release(diffrax.__version__)
    assert (0, 7, 0) <= _RELEASE
    old = _RELEASE < (0, 7, 1)
    assert save_every(diffrax.SubSaveAt(steps=True)) == 1
    assert save_every(diffrax.SubSaveAt(t1=True, steps=False)) == 0
    assert save_every(diffrax.SubSaveAt(t1=True)) == 0
    assert save_every(diffrax.SubSaveAt(steps=3)) == (1 if old else 3)
    # The layout agrees with the buffer diffrax fills.
    for steps in (True, 3):
        saveat = diffrax.SaveAt(t0=True, t1=True, steps=steps)
        sol = _solve(saveat=saveat, adjoint=diffrax.RecursiveCheckpointAdjoint())
        layout = SaveLayout.of(saveat.subs)
        num_steps = int(sol.stats["num_accepted_steps"])
        assert num_steps == 10
        saved = int(jnp.sum(jnp.isfinite(sol.ts)))
        assert saved == 1 + layout.steps_saved(num_steps) + layout.t1_due(num_steps)

    t1 = jnp.array(1.0)
    keep = jnp.array(True)
    tprev = jnp.array(0.5)
    # 1e-11 below `t1`: within 0.7.0's tolerance, far outside 100 ULPs.
    near = jnp.array(1.0 - 1e-11)
    clipped = clip_to_end(tprev, near, t1, clip_floor(t1), keep)
    assert clipped == (t1 if old else near)
    # 50 ULPs below `t1`: clipped by every version.
    ulps = t1
    for _ in range(50):
        ulps = jnp.nextafter(ulps, -jnp.inf)
    assert clip_to_end(tprev, ulps, t1, clip_floor(t1), keep) == t1
    # A rejected step halves the way to `t1` instead.
    assert clip_to_end(tprev, ulps, t1, clip_floor(t1), ~keep) == 0.75
