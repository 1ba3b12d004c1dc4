"""The front door: ``tp.__all__`` is exactly the documented set, every name in it (and in
``tp.analysis``, ``tp.analysis.results``, ``tp.errors``, ``tp.capture``) imports, every public name is
in docs/api.md, the error types subclass the matching built-ins, and every result's table has the same
columns."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tlprobes as tp

ROOT = Path(__file__).resolve().parents[1]
API_DOC = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")

TOP = {
    # capture
    "attach", "run", "Session", "Result", "Target",
    # probes
    "Probe", "Residual", "Attention", "Components", "LogitLens", "Activation", "Steps",
    "ResidualMean", "HeadSteps",
    # load and report
    "load_model", "load_results", "from_cache", "Report",
    # errors: the base class here, every type in tp.errors
    "TLProbesError",
    # the two headline analyzers
    "angle_trajectory", "path_length",
    # submodules
    "analysis", "render", "suites", "models", "errors",
}


def test_top_level_is_exactly_the_chosen_names():
    assert set(tp.__all__) == TOP
    assert len(tp.__all__) == len(TOP)  # no name twice
    assert set(dir(tp)) == TOP | {"__version__"}


@pytest.mark.parametrize("name", sorted(TOP))
def test_every_top_level_name_imports(name):
    value = getattr(tp, name)
    assert value is not None
    mod = importlib.import_module("tlprobes")
    assert getattr(mod, name) is value


@pytest.mark.parametrize("name", ["angle", "pca", "logit_lens", "LayerError", "SITES", "Meta",
                                  "adapter_for", "run_suite", "attention_view", "Inputs"])
def test_moved_names_are_gone_from_the_top(name):
    with pytest.raises(AttributeError, match=name):
        getattr(tp, name)


@pytest.mark.parametrize("module", ["tlprobes.analysis", "tlprobes.analysis.results", "tlprobes.errors",
                                    "tlprobes.capture", "tlprobes.render", "tlprobes.suites",
                                    "tlprobes.models"])
def test_every_name_of_each_public_module_imports(module):
    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{module}.{name}"


def test_analysis_holds_functions_procrustes_and_accumulators_not_result_types():
    import dataclasses

    import tlprobes.analysis as ta
    import tlprobes.analysis.results as tr

    for name in ta.__all__:
        obj = getattr(ta, name)
        assert callable(obj), name
        assert not dataclasses.is_dataclass(obj), f"{name} is a result type: list it in results"
        if isinstance(obj, type):
            assert name == "Procrustes" or name.endswith("Accumulator"), name
    for name in tr.__all__:
        assert dataclasses.is_dataclass(getattr(tr, name)), name
        assert name not in ta.__all__
    assert "lens_readout" in ta.__all__ and "logit_lens" not in ta.__all__
    assert not hasattr(ta, "logit_lens")


def test_capture_exports_probes_and_captures_only():
    import tlprobes.capture as tc

    assert "BatchContext" not in tc.__all__
    for name in tc.__all__:
        obj = getattr(tc, name)
        assert issubclass(obj, tc.Probe) or name.endswith("Capture") or name == "Target", name


def test_every_public_name_is_in_the_api_reference():
    import tlprobes.analysis as ta
    import tlprobes.analysis.results as tr
    import tlprobes.errors as te

    documented = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", API_DOC))
    missing = {f"tp.{n}" for n in tp.__all__ if n not in documented}
    missing |= {f"tp.analysis.{n}" for n in ta.__all__ if n not in documented}
    missing |= {f"tp.analysis.results.{n}" for n in tr.__all__ if n not in documented}
    missing |= {f"tp.errors.{n}" for n in te.__all__ if n not in documented}
    assert not missing, f"not in docs/api.md: {sorted(missing)}"
    for ref in re.findall(r"^::: (\S+)", API_DOC, re.M):  # every reference resolves
        module, _, attr = ref.rpartition(".")
        assert getattr(importlib.import_module(module), attr) is not None, ref


def test_every_error_type_is_in_errors_and_subclasses_a_builtin():
    import tlprobes._errors as private
    import tlprobes.errors as te

    types_ = {n for n, v in vars(private).items()
              if isinstance(v, type) and issubclass(v, tp.TLProbesError)}
    assert types_ == set(te.__all__)
    for name in te.__all__:
        cls = getattr(te, name)
        assert cls is getattr(private, name)
        if cls is not tp.TLProbesError:
            assert issubclass(cls, tp.TLProbesError)
            assert issubclass(cls, (ValueError, KeyError, TypeError, IndexError, RuntimeError,
                                   ImportError)), name
    from tlprobes.suites import SuiteError

    assert SuiteError is te.SuiteError and issubclass(SuiteError, ValueError)
    assert issubclass(te.MissingCaptureError, KeyError) and issubclass(te.OptionError, ValueError)


def test_renamed_correction_is_refused_with_its_new_name():
    import tlprobes.analysis as ta

    a, b = np.ones((2, 4)), np.zeros((2, 4))
    with pytest.raises(tp.errors.InputError, match="use bonferroni='bonferroni_states'"):
        ta.paired_test(a, b, bonferroni="course")
    with pytest.raises(ValueError, match="use correction='bonferroni_states'"):
        from tlprobes.analysis._stats import _refuse_renamed

        _refuse_renamed("course", "correction")


def test_every_to_frame_has_the_same_columns():
    import tlprobes.analysis as ta

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 6, 8))
    X = rng.normal(size=(12, 5))
    results = [
        ta.angle_trajectory(x, np.full(4, 3), n_resamples=99), ta.within_layer_angles(x),
        ta.path_length(x), ta.pca(X), ta.tsne(X, perplexity=3), ta.drift(x), ta.anisotropy(x),
        ta.state_space_trajectories(x[:, :, 0]), ta.unembedding_spectrum(X),
        ta.weight_tying(X.T, X), ta.rsa(X, X, n_perm=9), ta.paired_test(x[:, 0, :, 0], x[:, 1, :, 0]),
        ta.shared_vocabulary({"a": 0}, {"a": 1}), ta.nearest_neighbors(X, X, 2),
        ta.retrieval_precision(X, X), ta.map_embeddings(X, X[:, ::-1]),
    ]
    for res in results:
        df = res.to_frame()
        assert list(df.columns) == ["layer", "group", "statistic", "value"], type(res).__name__
        assert len(df), type(res).__name__
    pca = ta.pca(X).to_frame()
    assert "component" not in pca.columns
    assert pca.query("group == 'pc1' and statistic == 'explained_variance'").value.tolist() == [
        pytest.approx(ta.pca(X).explained_variance[0])]


def test_help_does_not_import_torch():
    code = ("import sys, tlprobes as tp; tp.errors; tp.TLProbesError; import tlprobes.cli; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""}, check=True)
    assert out.stdout.strip() == "False"
