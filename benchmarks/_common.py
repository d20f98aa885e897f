"""What the benchmark scripts share: the MLP neural ODE and SDE problems, the small
problem and loss of the gradient-parity checks, the relative error of a gradient,
compiled memory and compile time, and timing by the median of interleaved repeats."""

import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import lineax as lx
import numpy as np

#
# Problems.
#


def make_problem(name, dtype):
    """`(params, static, terms, y0)` of a neural ODE (`"mlp"`: MLP vector field, width
    128, depth 2, batch 32 x state 64; `"large"`: batch 256 x state 256) or a neural
    SDE (`"sde"`: MLP drift and diagonal diffusion, batch 32 x state 64, on a
    `VirtualBrownianTree`). The model goes in `args` (as `BacksolveAdjoint`
    requires)."""
    batch, size = (256, 256) if name == "large" else (32, 64)
    keys = jr.split(jr.PRNGKey(0), 4)
    drift = eqx.nn.MLP(
        size, size, 128, 2, activation=jnp.tanh, key=keys[0], dtype=dtype
    )
    y0 = 0.5 * jr.normal(keys[1], (batch, size), dtype=dtype)
    if name in ("mlp", "large"):
        model = drift
        terms = diffrax.ODETerm(lambda t, y, m: jax.vmap(m)(y))
    else:
        diffusion = eqx.nn.MLP(
            size, size, 128, 1, activation=jnp.tanh, key=keys[2], dtype=dtype
        )
        model = (drift, diffusion)
        y0 = y0.ravel()
        bm = diffrax.VirtualBrownianTree(
            0.0,
            1.0,
            tol=1e-3,
            shape=jax.ShapeDtypeStruct((batch * size,), dtype),
            key=keys[3],
        )
        batched = lambda f, y: jax.vmap(f)(y.reshape(batch, size)).ravel()

        terms = diffrax.MultiTerm(
            diffrax.ODETerm(lambda t, y, m: batched(m[0], y)),
            diffrax.ControlTerm(
                lambda t, y, m: lx.DiagonalLinearOperator(0.1 * batched(m[1], y)), bm
            ),
        )

    params, static = eqx.partition(model, eqx.is_array)
    return params, static, terms, y0


def make_fns(problem, solver, adjoint, num_steps, dtype):
    """The jitted gradient of `mean(y(1) ** 2)` with respect to `(params, y0)` through
    `num_steps` constant steps of `solver` with `adjoint`, the jitted forward solve, and
    their arguments."""
    params, static, terms, y0 = make_problem(problem, dtype)
    t0, t1 = jnp.asarray(0.0, dtype), jnp.asarray(1.0, dtype)

    def solve(params, y0, adjoint):
        sol = diffrax.diffeqsolve(
            terms,
            solver,
            t0,
            t1,
            (t1 - t0) / num_steps,
            y0,
            args=eqx.combine(params, static),
            adjoint=adjoint,
            max_steps=num_steps,
        )
        return jnp.mean(sol.ys**2)

    grad = jax.jit(jax.grad(lambda p, y: solve(p, y, adjoint)))
    forward = jax.jit(lambda p, y: solve(p, y, diffrax.RecursiveCheckpointAdjoint()))
    return grad, forward, (params, y0)


class Field(eqx.Module):
    """A time-dependent vector field on a pytree state `{"x", "v"}`, with a parameter
    inside the term (`W`) and two in `args`."""

    W: jax.Array

    def __call__(self, t, y, args):
        a, b = args
        return {
            "x": y["v"] + jnp.sin(t) * jnp.tanh(self.W @ y["x"]),
            "v": -a * y["x"] - b * jnp.cos(t) * y["v"],
        }


def parity_problem():
    """`(term, y0, args, ts)` of the gradient-parity checks: `Field` on a pytree state
    (float64 when x64 is enabled), and save times over `[0, 2]`, two of them at the
    ends and two close together."""
    term = diffrax.ODETerm(Field(jnp.array([[0.3, -0.8], [0.5, 0.2]])))
    y0 = {"x": jnp.array([1.0, 0.5]), "v": jnp.array([0.3, -0.2])}
    args = (jnp.array(0.7), jnp.array(0.4))
    ts = jnp.array([0.0, 0.13, 0.5, 0.51, 1.0, 1.77, 2.0])
    return term, y0, args, ts


def readout(tree):
    """A nonlinear scalar loss of every entry of every leaf of `tree`."""
    return sum(
        jnp.sum(jnp.sin(1.0 + jnp.arange(x.size).reshape(x.shape)) * x**2)
        for x in jtu.tree_leaves(tree)
    )


#
# Measurement.
#


def relative_error(got, want):
    """|got − want| / |want|, in the 2-norm over every leaf together."""
    got, want = (
        jnp.concatenate([x.ravel() for x in jtu.tree_leaves(g)]) for g in (got, want)
    )
    return float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))


def max_relative_error(got, want):
    """Largest, over the leaves, of max|got − want| / max|want| (max|got − want| where
    `want` is all zero); 0 if there are no leaves. NaN if `got` has a NaN."""
    errors = []
    for g, w in zip(jtu.tree_leaves(got), jtu.tree_leaves(want), strict=True):
        scale, diff = jnp.max(jnp.abs(w)), jnp.max(jnp.abs(g - w))
        errors.append(float(diff / scale) if scale > 0 else float(diff))
    return float(np.max(errors, initial=0.0))


def compile_and_measure(fn, args):
    """`fn` (a jitted function) compiled for `args`, the seconds compiling took, and
    the compiled program's temporary memory in bytes."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_time = time.perf_counter() - start
    return compiled, compile_time, temp_bytes(compiled)


def temp_bytes(compiled):
    """Temporary memory of a compiled program, in bytes, as XLA reports it."""
    return compiled.memory_analysis().temp_size_in_bytes


def round_robin(fns, args, repeats, rotate=False, clock=time.perf_counter):
    """Median wall time of each function of `fns` (a dict) on `args`, after one untimed
    call of each, timed in `repeats` interleaved rounds so that all share the machine's
    noise; with `rotate`, the order rotates from one round to the next. `clock` reads
    the time (`time.process_time` for the process's CPU time instead)."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    names = list(fns)
    times = {name: [] for name in names}
    for i in range(repeats):
        k = i % len(names) if rotate else 0
        for name in names[k:] + names[:k]:
            start = clock()
            jax.block_until_ready(fns[name](*args))
            times[name].append(clock() - start)
    return {name: float(np.median(t)) for name, t in times.items()}
