"""Suites: validation on load, every study end to end on a tiny model, run directories, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import HAS_BRIDGE, _build

import tlprobes as tp
from tlprobes.cli import main as cli
from tlprobes.suites import SuiteError, list_suites, load_results, load_suite, run_suite, suites_dir

REPO_PROBES = Path(__file__).resolve().parents[1] / "probes"


@pytest.fixture(scope="module")
def tiny(tiny_dir, hf_model):
    return _build("bridge" if HAS_BRIDGE else "hooked", tiny_dir, hf_model)


def _write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    (tmp_path / "prompts").mkdir(exist_ok=True)
    (tmp_path / "prompts" / "p.txt").write_text("Mary saw her dog.\nJohn gave her a book.\n")
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = """[suite]
name = "t"
study = "angles"

[prompts]
file = "prompts/p.txt"
target = " her"

[analysis]
controls = ["clean"]
"""


def test_shipped_suites_all_validate():
    names = list_suites()
    assert {"rotation_angles", "geometry", "path_length", "nouns_adjectives", "logit_lens",
            "procrustes"} <= set(names)
    for name in names:
        suite = load_suite(suites_dir() / f"{name}.toml")
        assert suite.prompts, name
    angles = load_suite(REPO_PROBES / "rotation_angles.toml")
    assert len(angles.prompts) >= 54 and all(" her" in p for p in angles.prompts)


@pytest.mark.parametrize(
    "edit, message",
    [
        (GOOD.replace('name = "t"', 'name = "t"\ncolour = "red"'), r"s\.toml:3: unknown key 'colour' in \[suite\]"),
        (GOOD + "\n[extras]\nx = 1\n", r"unknown section \[extras\]; valid sections"),
        (GOOD.replace('controls = ["clean"]', 'controls = "clean"'), r"s\.toml:\d+: controls must be a list of str"),
        (GOOD.replace('controls = ["clean"]', "alpha = 'small'"), r"alpha must be float"),
        (GOOD.replace("p.txt", "missing.txt"), r"prompt file 'prompts/missing.txt' not found"),
        (GOOD.replace('" her"', '" him"'), r"p\.txt:1: target ' him' .* is absent from prompt 0"),
        (GOOD.replace('"angles"', '"angels"'), r"unknown study 'angels'; valid studies: 'geometry'"),
        (GOOD.replace('study = "angles"\n', ""), r"\[suite\] needs the key 'study'"),
        ("[suite\nname=", r"not valid TOML"),
    ],
)
def test_bad_suites_fail_with_file_line_and_choices(tmp_path, edit, message):
    with pytest.raises(SuiteError, match=message) as info:
        load_suite(_write(tmp_path, edit))
    assert isinstance(info.value, ValueError) and isinstance(info.value, tp.TLProbesError)


def _suite(tmp_path: Path, name: str, limit: int = 16) -> Path:
    """A shipped suite, copied with a prompt limit and the repo's prompt files beside it (prompt
    files must lie in the suite's folder)."""
    import shutil

    shutil.copytree(REPO_PROBES / "prompts", tmp_path / "prompts", dirs_exist_ok=True)
    text = (REPO_PROBES / f"{name}.toml").read_text()
    text = text.replace('file = "prompts/', f'limit = {limit}\nfile = "prompts/')
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "name, tables",
    [
        ("rotation_angles", {"angles_course", "angles_clean", "within_layer"}),
        ("path_length", {"path_length", "decomposition", "path_vs_next_logprob"}),
        ("logit_lens", {"lens", "lens_no_ln", "weight_tying", "unembedding_spectrum"}),
        ("geometry", {"drift", "anisotropy", "pca_embeddings", "tsne"}),
        ("nouns_adjectives", {"state_space", "step_test", "steps_by_group"}),
        ("procrustes", {"embeddings", "layers"}),
    ],
)
def test_every_study_runs_end_to_end(tmp_path, tiny, name, tables):
    limit = 40 if name == "nouns_adjectives" else 16
    out = tmp_path / "run"
    report = run_suite(_suite(tmp_path, name, limit), out=out, model=tiny, second_model=tiny,
                       quiet=True, save_arrays=True)
    html = report.read_text(encoding="utf-8")
    assert report.name == "report.html" and "<!DOCTYPE html>" in html and "unpkg" not in html
    res = load_results(out)
    assert tables <= set(res.tables)
    for frame in res.tables.values():
        assert isinstance(frame, pd.DataFrame) and len(frame) > 0
    m = res.manifest
    assert m["suite"]["study"] == load_suite(_suite(tmp_path, name)).study
    assert m["mode"] in ("raw", "compat") and m["tl_version"] == m["packages"]["transformer-lens"]
    assert {"load_model", "compute"} <= set(m["timings_s"]) and m["seed"] == 0
    assert (out / "captures.safetensors").exists() == bool(res.captures)


def test_angles_tables_hold_the_protocol(tmp_path, tiny):
    out = tmp_path / "run"
    run_suite(_suite(tmp_path, "rotation_angles"), out=out, model=tiny, quiet=True)
    df = load_results(out).tables["angles_clean"]
    groups = set(df["group"])
    assert {"target", "before", "control", "target-before"} <= groups
    tb = df[df["group"] == "target-before"]
    assert {"t", "p", "p_bonferroni", "p_fdr_bh", "d_z"} <= set(tb["statistic"])
    assert sorted(df["layer"].unique().tolist()) == list(range(1, tiny.cfg.n_layers + 1))


def test_tampered_or_truncated_runs_fail_clearly(tmp_path, tiny):
    out = tmp_path / "run"
    run_suite(_suite(tmp_path, "path_length"), out=out, model=tiny, quiet=True)
    csv = out / "tables" / "path_length.csv"
    csv.write_bytes(csv.read_bytes()[:-20])  # truncated
    with pytest.raises(tp.errors.ResultsError, match="path_length.csv does not match the hash"):
        load_results(out)
    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text()[:50])
    with pytest.raises(tp.errors.ResultsError, match="not valid JSON"):
        load_results(out)
    with pytest.raises(tp.errors.ResultsError, match="manifest.json is missing"):
        load_results(tmp_path)


def test_cli_list_render_and_errors(tmp_path, tiny, capsys):
    assert cli(["list"]) == 0
    listed = capsys.readouterr().out
    assert "rotation_angles" in listed and "procrustes" in listed
    out = tmp_path / "run"
    run_suite(_suite(tmp_path, "logit_lens"), out=out, model=tiny, quiet=True)
    (out / "report.html").unlink()
    assert cli(["render", str(out)]) == 0
    assert (out / "report.html").exists()
    assert cli(["run", str(_write(tmp_path, GOOD.replace('" her"', '" him"')))]) == 2
    err = capsys.readouterr().err
    assert "tlprobes: error:" in err and "absent" in err
    assert json.loads((out / "manifest.json").read_text())["suite"]["name"] == "logit_lens"


def test_cli_runs_a_two_model_study_on_the_shipped_models(tmp_path):
    out = tmp_path / "run"
    code = cli(["run", str(_suite(tmp_path, "procrustes", 12)), "--model", "default-s1",
                "--second-model", "default", "--out", str(out), "--quiet"])
    assert code == 0
    res = load_results(out)
    assert res.manifest["model"]["requested"] == "default-s1"
    assert res.manifest["second_model"]["model_name"] == "default"
    scores = res.tables["embeddings"]
    nn = scores[(scores["group"] == "test") & (scores["statistic"] == "p_at_k_nn")]["value"].item()
    ident = scores[(scores["group"] == "identity") & (scores["statistic"] == "p_at_k_nn")]["value"].item()
    assert nn > ident  # the fitted map beats the identity between two independently trained models
