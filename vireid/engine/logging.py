"""Training logs: one JSON object per line (machine-readable, appendable, survives a crash), TensorBoard optional.

Rows are plain dicts, e.g. ``{"kind": "train", "epoch": 3, "step": 120, "global_step": 2208, "lr": 0.1,
"loss": 2.31, "loss_ce": 1.9, "img_per_s": 812.5, "time": 1712345678.1}`` and ``{"kind": "val", "epoch": 9,
"rank1": 41.2, ...}``. Read them back with :func:`read_jsonl`. Numbers (ints, floats, 0-d tensors) are also sent
to TensorBoard when it is installed and enabled, under ``<kind>/<key>`` at ``global_step``.

Only rank 0 logs: create the logger with ``enabled=is_main()``; a disabled logger creates no file.
"""

from __future__ import annotations

import json
import math
import numbers
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def _plain(value: Any) -> Any:
    """JSON-friendly value: 0-d tensors and NumPy scalars become numbers, NaN/inf become strings."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)) and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonlLogger:
    """Append rows to ``path`` as JSON lines (flushed per row); mirror numbers to TensorBoard if available.

    ``tensorboard``: True = use it (warn once if the package is missing), None = use it if installed, False = never.
    Events go to ``<path's folder>/tensorboard``.
    """

    def __init__(self, path: str | Path, *, enabled: bool = True, tensorboard: bool | None = None) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if tensorboard:
                    warnings.warn("tensorboard logging requested but the tensorboard package is not installed "
                                  "(pip install tensorboard); logging JSON lines only", stacklevel=2)
            else:
                self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        """Write one row (a no-op when disabled)."""
        if not self.enabled or self._file is None:
            return
        clean = {k: _plain(v) for k, v in row.items()}
        self._file.write(json.dumps(clean, sort_keys=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            kind, step = clean.get("kind", "train"), clean.get("global_step", 0)
            for key, value in clean.items():
                if key not in ("kind", "global_step", "epoch", "step", "time") and isinstance(value, numbers.Real) \
                        and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, global_step=step)

    def truncate_after(self, global_step: int) -> None:
        """Drop rows with ``global_step`` beyond the resume point, left by a run killed after its last checkpoint.

        Keeps the log equal to an uninterrupted run's once the resumed run has finished.
        """
        if not self.enabled or self._file is None or not self.path.exists():
            return
        self._file.close()
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True)
                if line.strip() and _keep(line, global_step)]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> JsonlLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _keep(line: str, global_step: int) -> bool:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:  # a line torn by a crash
        return False
    return not isinstance(row, dict) or int(row.get("global_step", 0)) <= global_step


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The rows of a JSON-lines log, in order (a torn last line from a crash is skipped)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
