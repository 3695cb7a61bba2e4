"""Dataset parsers for the real on-disk layouts (docs/layouts.md) and the registry that names them.

>>> from vireid.data.datasets import load_dataset
>>> ds = load_dataset("sysu_mm01", "/data/SYSU-MM01")          # doctest: +SKIP
>>> ds.num_classes, len(ds.train), ds.info["test_ids"][:3]       # doctest: +SKIP
(395, 34167, [6, 10, 17])

A parser is a function ``parse(root, options, log) -> CrossModalDataset`` that records every problem it finds in
``log`` (a :class:`ProblemLog`) instead of stopping at the first. Register your own with
:func:`register_dataset`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vireid.data.datasets import common, llcm, market1501, regdb, sysu_mm01, sysu_mm02
from vireid.data.datasets.common import DatasetOptions, LayoutError, ProblemLog
from vireid.data.records import CrossModalDataset, Problem
from vireid.errors import DataError

Parser = Callable[[Path, DatasetOptions, ProblemLog], CrossModalDataset]

DATASETS: dict[str, Parser] = {}


def _key(name: str) -> str:
    """Lookup key of a dataset name: case, '-' and '_' do not matter (``SYSU-MM01`` == ``sysu_mm01``)."""
    return name.lower().replace("-", "").replace("_", "")


def register_dataset(name: str, parser: Parser) -> None:
    """Add ``parser`` under ``name``; a name that collides with a registered one (ignoring case, '-', '_') is an
    error rather than a silent replacement."""
    for known in DATASETS:
        if _key(known) == _key(name):
            raise ValueError(f"dataset '{name}' is already registered (as '{known}')")
    DATASETS[name] = parser


def dataset_name(name: str) -> str:
    """The registered name for ``name`` (any case, '-' for '_'); DataError listing the known names otherwise."""
    for known in DATASETS:
        if _key(known) == _key(name):
            return known
    raise DataError(f"unknown dataset '{name}'; known datasets: {', '.join(DATASETS)}")


def load_dataset(
    name: str,
    root: str | Path,
    *,
    trial: int = 1,
    target: str = "sysumm01",
    labels: str = "pseudo",
    check_images: bool = False,
    strict: bool = True,
) -> CrossModalDataset:
    """Parse the dataset ``name`` at ``root`` into records.

    Args:
        name: a registered name (``sysu_mm01``, ``regdb``, ``sysu_mm02``, ``llcm``, ``market1501``,
            ``market1501_gen``); any case, '-' for '_'.
        root: the dataset folder.
        trial: RegDB trial 1..10.
        target: market1501_gen twin set (``sysumm01``, ``sysumm02``, ``regdb``).
        labels: market1501_gen labels, ``pseudo`` (PPLR file) or ``ground_truth``.
        check_images: decode every image: corrupt files become errors, non-RGB images warnings (they are
            converted to RGB when loaded).
        strict: raise :class:`DataError` on the first error-severity problem (with the count of the others);
            with False, every problem is returned in ``dataset.problems`` and the records that could be parsed
            are kept. Warnings never raise.

    Raises:
        DataError: unknown name, missing root, out-of-range trial or unknown target/labels (always); any
            error-severity problem (strict mode).
    """
    registered = dataset_name(name)
    path = common.check_root(root)
    log = ProblemLog()
    options = DatasetOptions(trial=trial, target=target, labels=labels)
    try:
        dataset = DATASETS[registered](path, options, log)
    except LayoutError as exc:  # the root is not this dataset at all: nothing else to check
        dataset = CrossModalDataset(registered, path, [], [], [], {})
        log.problems.append(Problem("error", str(exc)))
    if check_images:
        common.check_images(path, [*dataset.train, *dataset.val, *dataset.test], log)
    dataset.problems = list(log.problems)
    return common.finish(dataset, strict=strict, name=registered)


for _name, _parser in (
    ("sysu_mm01", sysu_mm01.parse),
    ("regdb", regdb.parse),
    ("sysu_mm02", sysu_mm02.parse),
    ("llcm", llcm.parse),
    ("market1501", market1501.parse),
    ("market1501_gen", market1501.parse_gen),
):
    register_dataset(_name, _parser)

__all__ = ["DATASETS", "DatasetOptions", "Parser", "ProblemLog", "dataset_name", "load_dataset", "register_dataset"]
