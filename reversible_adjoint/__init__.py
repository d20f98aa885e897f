"""O(1)-memory, exact gradients through diffrax solves, by algebraically reversible
solvers."""

import importlib.metadata

from ._adjoint import ReversibleAdjoint as ReversibleAdjoint
from ._adjoint_term import (
    AdjointTerm as AdjointTerm,
    BackwardStep as BackwardStep,
    EndCotangents as EndCotangents,
    StepCotangents as StepCotangents,
)
from ._drift import ReconstructionDriftWarning as ReconstructionDriftWarning
from ._round_trip import round_trip_error as round_trip_error
from ._solver import (
    AbstractReversibleSolver as AbstractReversibleSolver,
    AsynchronousLeapfrog as AsynchronousLeapfrog,
    LeapfrogMidpoint as LeapfrogMidpoint,
    Reversible as Reversible,
    ReversibleHeun as ReversibleHeun,
    SemiImplicitEuler as SemiImplicitEuler,
)

__version__ = importlib.metadata.version("reversible_adjoint")
