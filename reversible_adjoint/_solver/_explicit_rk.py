"""One step of an explicit Runge–Kutta method, from its Butcher tableau, with the
stages in a `jax.lax.scan`.

diffrax runs a Runge–Kutta method's stages in an `equinox.internal.while_loop`. Its
default kind is a checkpointed loop, whose pullback evaluates every stage again; the
kinds that avoid that cost reverse mode time of their own, and only one of them can be
differentiated in both modes. Here the stages are a `lax.scan` over the rows of the
tableau: the step is plain JAX, differentiable in both modes, its linearisation keeps
every stage's residuals, and its transpose evaluates nothing again. Together, `stages`,
`increment` and `error_and_dense_info` compute what diffrax's `step` does for a method
with one explicit `diffrax.ButcherTableau`, from a fresh start (`made_jump=False` on a
first step: no first-same-as-last reuse), to round-off: the same stages, solution,
error estimate and `dense_info`.

Why a loop and not a Python loop over the stages (traced once each). Unrolled, the
stages of a step form one chain of elementwise operations wherever the vector field is
elementwise (a reaction term, `jnp.roll` stencils, a coupling between the leaves of a
pytree state), and XLA fuses that chain into each of the step's outputs separately,
recomputing every earlier stage in each (and, through a `jnp.roll`, at each shifted
index). The compiled program then grows much faster than the work: with
`Reversible(Tsit5())` on a pair of 8×8 fields, 20 steps, `ReversibleAdjoint`'s gradient
compiled to about 175,000 lines of HLO, in 100 s, and ran 8,000 times slower than plain
`Tsit5` with `RecursiveCheckpointAdjoint` (`benchmarks/pytree_state.py`). The loop
materialises each stage, as diffrax's own stage loop does, so that no fusion spans more
than one stage; its cost on a state of one array (an MLP's, whose matrix products XLA
does not fuse across anyway) is the loop's overhead.

The stages are kept stacked along a leading axis of each leaf, as diffrax's step gives
them to the method's interpolation (`dense_info["k"]`). The solution needs only the
first `solution_stages(tableau)` stages; the others (the last stage of a
first-same-as-last method, at the step's end) serve the error estimate and the dense
output only, so they are computed apart, when those are wanted.
"""

import diffrax
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np


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


def num_stages(ks) -> int:
    """The number of stages in `ks` (stacked along a leading axis of each leaf)."""
    return jtu.tree_leaves(ks)[0].shape[0]


def _dot(coefficients, ks):
    """`Σ_j coefficients[j]·ks[j]`, over the stages `ks` stacked along a leading axis of
    each leaf (as diffrax's dot product of a tableau row with the stages)."""
    return jtu.tree_map(
        lambda k: jnp.tensordot(jnp.asarray(coefficients, k.dtype), k, axes=1), ks
    )


def _add(y, increment):
    return jtu.tree_map(lambda a, b: a + b, y, increment)


def stages(tableau, terms, t0, t1, y0, args, ks=None, stop=None):
    """The stages `k_0, ..., k_{stop−1}` (all by default) of the step of the explicit
    method `tableau` from `(t0, y0)` to `t1` (either side of `t0`), stacked along a
    leading axis of each leaf, continuing from the first stages `ks` (stacked the same
    way), given. Stage `i` is
    `k_i = terms.vf_prod(t0 + c_i·(t1 − t0), y0 + Σ_j a_ij·k_j, args, control)` with
    `control = terms.contr(t0, t1)`, as in diffrax (a stage at `c_i = 1` is taken at
    `t1` exactly). Two or more stages are made in a `lax.scan` (module docstring); a
    single one is made directly."""
    stop = tableau.num_stages if stop is None else stop
    start = 0 if ks is None else num_stages(ks)
    if start >= stop:
        return ks
    control = terms.contr(t0, t1)
    dt = t1 - t0
    # The tableau as a strictly lower triangular `stop × stop` matrix, and its nodes.
    a = np.zeros((stop, stop))
    for i, row in enumerate(tableau.a_lower[: stop - 1]):
        a[i + 1, : len(row)] = row
    c = np.array([0.0, *tableau.c])[:stop]

    def stage(ks, c_i, a_i):
        t_i = jnp.where(c_i == 1, t1, t0 + c_i * dt)
        return terms.vf_prod(t_i, _add(y0, _dot(a_i, ks)), args, control)

    shapes = jax.eval_shape(lambda: terms.vf_prod(t0, y0, args, control))
    buffer = jtu.tree_map(lambda s: jnp.zeros((stop, *s.shape), s.dtype), shapes)
    if ks is not None:
        buffer = jtu.tree_map(lambda b, k: b.at[:start].set(k), buffer, ks)
    c = jnp.asarray(c[start:], jnp.result_type(dt))

    def body(ks, row):
        i, c_i, a_i = row
        k_i = stage(ks, c_i, a_i)
        ks = jtu.tree_map(
            lambda k, x: lax.dynamic_update_index_in_dim(k, x, i, 0), ks, k_i
        )
        return ks, None

    rows = (jnp.arange(start, stop), c, a[start:])
    if stop - start == 1:
        return body(buffer, jtu.tree_map(lambda x: x[0], rows))[0]
    return lax.scan(body, buffer, rows)[0]


def increment(tableau, ks, y0):
    """`Σ_i b_i·k_i`: the solution is `y0` plus this."""
    del y0
    return _dot(tableau.b_sol[: num_stages(ks)], ks)


def error_and_dense_info(tableau, terms, t0, t1, y0, args, ks, step_increment):
    """The error estimate `Σ_i β_i·k_i` and the `dense_info` of the step whose first
    stages are `ks` and whose increment is `step_increment`, computing the remaining
    stages: `dict(y0=y0, y1=y0 + step_increment, k=...)`, the stages stacked along a
    leading axis of each leaf, as diffrax's Runge–Kutta step gives them to the
    method's interpolation."""
    ks = stages(tableau, terms, t0, t1, y0, args, ks)
    y_error = _dot(tableau.b_error, ks)
    return y_error, dict(y0=y0, y1=_add(y0, step_increment), k=ks)
