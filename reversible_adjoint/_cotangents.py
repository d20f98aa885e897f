"""Cotangents as the backward pass handles them: PyTrees with zeros (or `None`, a
symbolic zero) at inexact leaves and `None` elsewhere."""

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu


def zeros_like_inexact(tree):
    """Zeros for the inexact arrays of `tree`, `None` elsewhere: a zero cotangent."""
    return jtu.tree_map(
        lambda x: jnp.zeros_like(x) if eqx.is_inexact_array(x) else None, tree
    )


def add(a, b):
    """Sum of two cotangents of the same structure, `None` leaves being zeros."""
    if a is None:
        return b
    if b is None:
        return a
    return jtu.tree_map(
        lambda x, y: x if y is None else (y if x is None else x + y),
        a,
        b,
        is_leaf=lambda x: x is None,
    )


def materialise(ct, like):
    """The cotangent `ct` of `like`, with zeros for symbolic zeros (`None`) at inexact
    leaves of `like`, and `None` at its other leaves."""
    if ct is None:
        return zeros_like_inexact(like)

    def _fn(x, c):
        if not eqx.is_inexact_array(x):
            return None
        if c is None:
            return jnp.zeros_like(x)
        return jnp.asarray(c, dtype=x.dtype)

    return jtu.tree_map(_fn, like, ct, is_leaf=lambda x: x is None)


def or_zero(x, zero):
    """A scalar cotangent, `zero` (of the wanted dtype) if it is `None`."""
    return zero if x is None else x.astype(zero.dtype)


def mask(tree, keep):
    """`tree` where `keep`, zeros elsewhere."""
    return jtu.tree_map(lambda x: jnp.where(keep, x, jnp.zeros_like(x)), tree)


def entry(tree, i):
    """Entry `i` of every leaf of `tree`."""
    return jtu.tree_map(lambda x: x[i], tree)


def filter_vjp(fn, args, differentiate):
    """`eqx.filter_vjp(fn, *args)`, differentiating only what `differentiate` flags:
    one flag per argument, `True`, `False`, or a PyTree of bools that is a prefix of
    the argument (as `equinox.partition` takes it) to differentiate some of its leaves
    only. What is not differentiated is closed over, and its cotangent is `None`.

    Not differentiating what nobody asked about matters: an SDE's Brownian motion, for
    one, cannot be differentiated with respect to time; and the cotangent of an array
    in `args` that is not differentiated would cost the backward pass its size and
    its computation at every step.
    """
    parts = [
        (None, arg) if flag is False else eqx.partition(arg, flag)
        for arg, flag in zip(args, differentiate, strict=True)
    ]
    flagged = [flag is not False for flag in differentiate]
    diff_args = [diff for (diff, _), flag in zip(parts, flagged) if flag]

    def partial(*diff):
        diff = iter(diff)
        return fn(
            *[
                eqx.combine(next(diff), const) if flag else const
                for (_, const), flag in zip(parts, flagged)
            ]
        )

    out, pullback = eqx.filter_vjp(partial, *diff_args)

    def pullback_all(ct):
        cts = iter(pullback(ct))
        return tuple(next(cts) if flag else None for flag in flagged)

    return out, pullback_all
