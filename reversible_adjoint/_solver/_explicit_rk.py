"""One step of an explicit Runge–Kutta method, from its Butcher tableau, with the
stages unrolled.

diffrax runs a Runge–Kutta method's stages in an `equinox.internal.while_loop`. Its
default kind is a checkpointed loop, whose pullback evaluates every stage again; the
kinds that avoid that cost reverse mode time of their own, and only one of them can be
differentiated in both modes. Here the stages are a Python loop, traced once each: the
step is plain JAX, differentiable in both modes, its linearisation keeps every stage's
residuals, and its transpose evaluates nothing again. Together, `stages`, `increment`
and `error_and_dense_info` compute what diffrax's `step` does for a method with one
explicit `diffrax.ButcherTableau`, from a fresh start (`made_jump=False` on a first
step: no first-same-as-last reuse), to round-off: the same stages, solution, error
estimate and `dense_info`.

The solution needs only the first `solution_stages(tableau)` stages; the others (the
last stage of a first-same-as-last method, at the step's end) serve the error estimate
and the dense output only, so they are computed apart, when those are wanted.
"""

import diffrax
import jax.numpy as jnp
import jax.tree_util as jtu


def explicit_tableau(solver) -> diffrax.ButcherTableau | None:
    """The Butcher tableau of `solver` if its step is diffrax's Runge–Kutta step on one
    explicit tableau (which the functions below compute), else `None`."""
    if not isinstance(solver, diffrax.AbstractERK):
        return None
    if type(solver).step is not diffrax.AbstractRungeKutta.step:
        return None  # A step of its own.
    tableau = solver.tableau
    if not isinstance(tableau, diffrax.ButcherTableau) or tableau.implicit:
        return None
    return tableau


def solution_stages(tableau: diffrax.ButcherTableau) -> int:
    """The number of leading stages that the solution uses: up to the last with a
    nonzero weight `b_i` (a stage depends on earlier stages only)."""
    return 1 + max(i for i, b in enumerate(tableau.b_sol) if b != 0)


def _combination(coefficients, ks, like):
    """`Σ_j coefficients[j]·ks[j]` over the nonzero coefficients, summed in order (as
    diffrax's dot product of a tableau row with the stages), or zeros like `like`."""
    terms = [(float(a), k) for a, k in zip(coefficients, ks) if a != 0]
    if not terms:
        return jtu.tree_map(jnp.zeros_like, like)

    def combine(*leaves):
        total = terms[0][0] * leaves[0]
        for (a, _), leaf in zip(terms[1:], leaves[1:]):
            total = total + a * leaf
        return total

    return jtu.tree_map(combine, *[k for _, k in terms])


def _add(y, increment):
    return jtu.tree_map(lambda a, b: a + b, y, increment)


def stages(tableau, terms, t0, t1, y0, args, ks=(), stop=None) -> tuple:
    """The stages `k_0, ..., k_{stop−1}` (all by default) of the step of the explicit
    method `tableau` from `(t0, y0)` to `t1` (either side of `t0`), continuing from the
    first `len(ks)` stages, given. Stage `i` is
    `k_i = terms.vf_prod(t0 + c_i·(t1 − t0), y0 + Σ_j a_ij·k_j, args, control)` with
    `control = terms.contr(t0, t1)`, as in diffrax (a stage at `c_i = 1` is taken at
    `t1` exactly)."""
    stop = tableau.num_stages if stop is None else stop
    ks = list(ks)
    if len(ks) >= stop:
        return tuple(ks)
    control = terms.contr(t0, t1)
    dt = t1 - t0
    c = (0.0, *tableau.c)
    rows = ((), *tableau.a_lower)
    for i in range(len(ks), stop):
        if c[i] == 0:
            t_i = t0
        elif c[i] == 1:
            t_i = t1
        else:
            t_i = t0 + float(c[i]) * dt
        y_i = _add(y0, _combination(rows[i], ks, y0)) if i > 0 else y0
        ks.append(terms.vf_prod(t_i, y_i, args, control))
    return tuple(ks)


def increment(tableau, ks, y0):
    """`Σ_i b_i·k_i`: the solution is `y0` plus this."""
    return _combination(tableau.b_sol, ks, y0)


def error_and_dense_info(tableau, terms, t0, t1, y0, args, ks, step_increment):
    """The error estimate `Σ_i β_i·k_i` and the `dense_info` of the step whose first
    stages are `ks` and whose increment is `step_increment`, computing the remaining
    stages: `dict(y0=y0, y1=y0 + step_increment, k=...)`, the stages stacked along a
    leading axis of each leaf, as diffrax's Runge–Kutta step gives them to the
    method's interpolation."""
    ks = stages(tableau, terms, t0, t1, y0, args, ks)
    y_error = _combination(tableau.b_error, ks, y0)
    k = jtu.tree_map(lambda *leaves: jnp.stack(leaves), *ks)
    return y_error, dict(y0=y0, y1=_add(y0, step_increment), k=k)
