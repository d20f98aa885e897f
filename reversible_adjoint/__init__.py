"""O(1)-memory, exact gradients through diffrax solves, by algebraically reversible
solvers."""

import importlib.metadata

from ._adjoint import ReversibleAdjoint as ReversibleAdjoint
from ._adjoint_term import AdjointTerm as AdjointTerm
from ._solver import (
    AbstractReversibleSolver as AbstractReversibleSolver,
    ReversibleHeun as ReversibleHeun,
)


__version__ = importlib.metadata.version("reversible_adjoint")
