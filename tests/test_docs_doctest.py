"""Every docstring example of the package runs (doctest), against the model that ships with tlprobes.

Examples that need what CI cannot have (a run directory on disk, minutes of training) say
``# doctest: +SKIP``; everything else executes. ``tp`` is in every module's namespace.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import torch

import tlprobes


class _Checker(doctest.OutputChecker):
    """TL 2/3's HookedTransformer prints "Moving model to device:  cpu" on load; that line is
    TransformerLens talking, not the example's output, so it is dropped before comparing."""

    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        got = "".join(ln for ln in got.splitlines(True) if not ln.startswith("Moving model to device"))
        return super().check_output(want, got, optionflags)


MODULES = sorted(m.name for m in pkgutil.walk_packages(tlprobes.__path__, "tlprobes."))
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)  # examples that write files write here
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(checker=_Checker(), optionflags=FLAGS)
    for test in finder.find(module, name, globs={**vars(module), "tp": tlprobes}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_the_doctests_do_run():
    """A broken example is caught (the harness is not vacuous)."""
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    bad = type("M", (), {"__doc__": ">>> 1 + 1\n3\n"})
    for test in finder.find(bad, "bad", globs={}):
        runner.run(test, out=lambda s: None)
    assert runner.summarize(verbose=False).failed == 1
