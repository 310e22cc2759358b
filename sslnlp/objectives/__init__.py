"""Pretraining objectives: the protocol and registry (base.py) and one module per objective.

    from sslnlp.objectives import build_objective, get_objective, objective_names, register_objective

Importing this package registers the built-in objectives; ``objective: {name: ...}`` in a recipe selects one.
"""

from sslnlp.objectives.base import (
    OBJECTIVES,
    Objective,
    ObjectiveLoss,
    build_objective,
    get_objective,
    objective_names,
    register_objective,
)
from sslnlp.objectives import clm, electra, mlm, simcse  # noqa: E402,F401  (registers the built-ins)

__all__ = ["OBJECTIVES", "Objective", "ObjectiveLoss", "build_objective", "get_objective", "objective_names",
           "register_objective"]
