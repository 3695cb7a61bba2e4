"""Training engine: the loop (:class:`Trainer`), checkpoints, distributed helpers, LR schedules, logs, seeding.

Generic over a :class:`vireid.methods.Method`; see docs/training_interfaces.md for the contract and
:mod:`vireid.engine.trainer` for a complete example.
"""

from vireid.engine import distributed, schedules
from vireid.engine.checkpoint import (
    atomic_torch_save,
    load_checkpoint,
    load_model_state,
    make_meta,
    save_checkpoint,
    submodule_state,
)
from vireid.engine.logging import JsonlLogger, read_jsonl
from vireid.engine.seeding import get_rng_state, make_generator, seed_everything, set_rng_state
from vireid.engine.trainer import Trainer, total_steps

__all__ = [
    "JsonlLogger",
    "Trainer",
    "atomic_torch_save",
    "distributed",
    "get_rng_state",
    "load_checkpoint",
    "load_model_state",
    "make_generator",
    "make_meta",
    "read_jsonl",
    "save_checkpoint",
    "schedules",
    "seed_everything",
    "set_rng_state",
    "submodule_state",
    "total_steps",
]
