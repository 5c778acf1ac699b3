"""Real datasets, as their publishers distribute them, turned into manifests (docs/datasets.md).

``prepare("chexpert", root, out, seed=0)`` or the dataset's own function (``prepare_chexpert``) reads the
published files in place, writes ``out`` (JSON lines) with every record's ``patient_id`` and a split
chosen by patient, and returns a ``PrepareResult`` whose ``str()`` is the summary: records per split,
label counts, and everything dropped by design or skipped as bad input.

Every preparer takes ``seed`` (0), ``on_error`` ("raise" or "skip"), ``exclude`` (manifests whose
images must not appear in this one) and ``leak_threshold`` (pHash bits, see ``medgrain.data.leakage``).

A new dataset is one module here whose ``prepare_<dataset>`` function registers itself with
``@PREPARERS.register("<name>", help=...)``, imported below; ``medgrain prepare`` lists it from the registry.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .chestxray14 import prepare_chestxray14
from .chexpert import prepare_chexpert
from .chexpert_test import prepare_chexpert_test
from .common import PREPARERS, PrepareError, PrepareResult
from .covidx import prepare_covidx
from .five_by_200 import prepare_chexpert_5x200, prepare_mimic_5x200
from .mgll_fundus import prepare_mgll_fundus
from .mimic_cxr import prepare_mimic_cxr
from .ms_cxr import prepare_ms_cxr
from .openi import prepare_openi
from .padchest import prepare_padchest
from .rfmid import prepare_rfmid
from .rsna import prepare_rsna
from .siim import prepare_siim
from .vindr_cxr import prepare_vindr_cxr


def preparer(name: str) -> Callable[..., PrepareResult]:
    """The adapter registered as ``name`` (``PREPARERS``); an unknown name lists the registered ones."""
    return PREPARERS.get(name)


def options(name: str) -> dict[str, Any]:
    """The keyword options a dataset accepts, with their defaults (for the command line)."""
    return {p.name: p.default for p in inspect.signature(preparer(name)).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def prepare(name: str, root: str | Path | None, out: str | Path, *, splits: str | Path | None = None,
            **opts: Any) -> PrepareResult:
    """Prepare dataset ``name`` from ``root`` into the manifest ``out``; an option the dataset does not
    take is an error, not ignored. ``splits``: a published split (list-file folder, split CSV or MRM's
    list file, see ``medgrain.data.prepare.splits``) replaces the drawn one."""
    accepted = options(name)
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise ValueError(f"{name} does not take {unknown}; its options are {sorted(accepted)}")
    result = preparer(name)(root, out, **opts)
    if splits is not None:
        from .splits import apply_published_split

        result = apply_published_split(result, splits, opts.get("on_error", "raise"))
    return result


__all__ = ["PREPARERS", "PrepareError", "PrepareResult", "options", "prepare", "preparer", "prepare_chestxray14",
           "prepare_chexpert", "prepare_covidx", "prepare_mgll_fundus", "prepare_mimic_cxr", "prepare_openi",
           "prepare_rfmid", "prepare_rsna", "prepare_siim", "prepare_chexpert_5x200", "prepare_mimic_5x200",
           "prepare_chexpert_test", "prepare_padchest", "prepare_vindr_cxr", "prepare_ms_cxr"]
