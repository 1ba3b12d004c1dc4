"""Probe suites: declarative studies in ``probes/*.toml``, run into a run directory with a report."""

from ._registry import STUDIES as STUDIES
from ._registry import get_study as get_study
from ._run import render_run as render_run
from ._run import run_suite as run_suite
from ._rundir import RunResults as RunResults
from ._rundir import load_results as load_results
from ._schema import Suite as Suite
from ._schema import SuiteError as SuiteError
from ._schema import find_suite as find_suite
from ._schema import list_suites as list_suites
from ._schema import load_suite as load_suite
from ._schema import suites_dir as suites_dir
from ._study import StudyContext as StudyContext
from ._study import StudyOutput as StudyOutput

__all__ = [
    "STUDIES", "RunResults", "StudyContext", "StudyOutput", "Suite", "SuiteError", "find_suite",
    "get_study", "list_suites", "load_results", "load_suite", "render_run", "run_suite",
    "suites_dir",
]
