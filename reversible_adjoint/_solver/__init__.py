from .base import AbstractReversibleSolver as AbstractReversibleSolver
from .reversible_heun import ReversibleHeun as ReversibleHeun
