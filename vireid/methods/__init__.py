"""Training methods as plug-ins: each module registers its name, settings and plan (:mod:`vireid.methods.registry`).

Importing this package registers the built-in methods (AGW, CAJ, MSCLNet, AML, DEEN, ADCA). Add your own with
:func:`register_method` (docs/adding_a_method.md).
"""

from vireid.methods import adca, agw, aml, caj, deen, msclnet  # noqa: F401  (each registers itself)
from vireid.methods.base import Batch, Method, Phase, PhasePlan, PhaseRun, RunContext
from vireid.methods.registry import MethodSettings, MethodSpec, get_method, method_names, register_method

__all__ = ["Batch", "Method", "MethodSettings", "MethodSpec", "Phase", "PhasePlan", "PhaseRun", "RunContext",
           "get_method", "method_names", "register_method"]
