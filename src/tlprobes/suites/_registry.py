"""Study registry: a suite's ``study = "..."`` names one of these."""

from __future__ import annotations

import importlib
from typing import Any

from .._errors import SuiteError, choices

__all__ = ["STUDIES", "get_study"]

#: study name -> module under ``tlprobes.suites.studies`` defining ``STUDY``
STUDIES: dict[str, str] = {
    "geometry": "geometry",
    "angles": "angles",
    "paths": "paths",
    "trajectories": "trajectories",
    "lens": "lens",
    "procrustes": "procrustes",
}


def get_study(name: str, *, where: str = "") -> Any:
    if name not in STUDIES:
        prefix = f"{where}: " if where else ""
        raise SuiteError(f"{prefix}unknown study {name!r}; valid studies: {choices(STUDIES)}")
    module = importlib.import_module(f"tlprobes.suites.studies.{STUDIES[name]}")
    return module.STUDY
