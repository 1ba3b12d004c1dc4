"""Hostile and clumsy run directories: symlinks, traversal, edited manifests, truncated, binary and
emptied files, refused and replaced output folders, failed runs. Each is a clear ``ResultsError`` /
``InputError`` or a safe outcome; nothing is read or written outside the run directory."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import tlprobes as tp
from tlprobes.cli import main as cli
from tlprobes.suites import load_results, render_run, run_suite
from tlprobes.suites._rundir import manifest_digest, safe_name

SUITE = """[suite]
name = "{name}"
study = "paths"

[model]
name = "default"

[prompts]
file = "p.txt"

[analysis]
show_prompts = 1
"""
PROMPTS = "Mary saw her dog.\nJohn gave her a book.\nThe cat sat on the mat.\n"


def _suite(folder: Path, name: str = "t") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "p.txt").write_text(PROMPTS)
    path = folder / "s.toml"
    path.write_text(SUITE.format(name=name))
    return path


@pytest.fixture(scope="module")
def model():
    import torch

    torch.set_num_threads(1)
    return tp.load_model("default")


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, model) -> Path:
    base = tmp_path_factory.mktemp("good")
    out = base / "run"
    run_suite(_suite(base / "suite"), out=out, model=model, quiet=True)
    return out


@pytest.fixture
def run(good_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(good_run, out, symlinks=True)
    return out


def _edit(run: Path, fn) -> None:
    """Edit the manifest consistently (the digest recomputed), as a careful forger would."""
    m = json.loads((run / "manifest.json").read_text())
    fn(m)
    m["digest"] = manifest_digest(m)
    (run / "manifest.json").write_text(json.dumps(m))


def _rehash(run: Path, rel: str) -> None:
    import hashlib

    digest = hashlib.sha256((run / rel).read_bytes()).hexdigest()
    _edit(run, lambda m: m["files"].__setitem__(rel, digest))


# ---------------------------------------------------------------------------------- reading
def test_a_good_run_loads(run):
    res = load_results(run)
    assert "path_length" in res.tables and res.manifest["digest"].startswith("sha256:")


def test_edited_manifest_fails_its_digest(run):
    m = json.loads((run / "manifest.json").read_text())
    m["seed"] = 1234
    (run / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(tp.errors.ResultsError, match="does not match its digest"):
        load_results(run)


def test_traversal_in_files_is_refused(run, tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_text("a\n1\n")
    import hashlib

    digest = hashlib.sha256(outside.read_bytes()).hexdigest()
    for rel in ("tables/../../outside.csv", str(outside), "../outside.csv", "tables/x/../../../o.csv",
                "tables\\..\\x.csv", "manifest.json", "report.html"):
        _edit(run, lambda m, rel=rel: m["files"].__setitem__(rel, digest))
        with pytest.raises(tp.errors.ResultsError, match="unexpected file"):
            load_results(run)
        _edit(run, lambda m, rel=rel: m["files"].pop(rel))
    load_results(run)  # restored


def test_symlinks_out_of_the_run_are_refused(run, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("secret\n42\n")
    table = run / "tables" / "path_length.csv"
    table.unlink()
    table.symlink_to(secret)
    _rehash(run, "tables/path_length.csv")  # even with the right hash
    with pytest.raises(tp.errors.ResultsError, match="symlink"):
        load_results(run)
    # a symlinked tables/ folder, and a symlinked manifest
    shutil.move(run / "tables", tmp_path / "elsewhere")
    (run / "tables").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(tp.errors.ResultsError, match="symlink"):
        load_results(run)


def test_symlinked_manifest_is_refused(run, tmp_path):
    shutil.move(run / "manifest.json", tmp_path / "m.json")
    (run / "manifest.json").symlink_to(tmp_path / "m.json")
    with pytest.raises(tp.errors.ResultsError, match="symlink"):
        load_results(run)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not valid JSON"),
        (b'{"tlprobes_run": 2, "fi', "not valid JSON"),
        (b"\x00\xff\xfe binary", "not UTF-8"),
        (b"[]", "JSON list, not an object"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not valid JSON"),
        (b'{"tlprobes_run": 1, "files": {}}', "layout tlprobes_run=1"),
    ],
)
def test_broken_manifests_fail_clearly(run, content, message):
    (run / "manifest.json").write_bytes(content)
    with pytest.raises(tp.errors.ResultsError, match=message):
        load_results(run)
    assert cli(["render", str(run)]) == 2


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.__setitem__("files", {}), "an empty\) 'files' table"),
        (lambda m: m.pop("suite"), "lacks suite.study"),
        (lambda m: m["files"].pop("view_data.safetensors"), "view_data.safetensors"),
    ],
)
def test_consistent_but_incomplete_manifests_fail_clearly(run, edit, message):
    _edit(run, edit)
    with pytest.raises(tp.errors.ResultsError, match=message):
        load_results(run)


@pytest.mark.parametrize(
    "rel, content, message",
    [
        ("facts.json", b"", "is empty"),
        ("facts.json", b"[1, 2]", "JSON list, not an object"),
        ("facts.json", b"\xff\xfe\x00", "not a JSON object"),
        ("tables/path_length.csv", b"\x00\x01\xff\xfe\x80", "not a UTF-8 CSV"),
        ("tables/path_length.csv", b"", "is empty"),
        ("view_data.safetensors", b"\x00" * 7, "not a safetensors"),
    ],
)
def test_emptied_binary_or_odd_files_fail_clearly(run, rel, content, message):
    (run / rel).write_bytes(content)
    with pytest.raises(tp.errors.ResultsError, match="truncated or edited"):
        load_results(run)  # first the hash
    _rehash(run, rel)
    with pytest.raises(tp.errors.ResultsError, match=message):
        load_results(run)  # then, with a forged hash, the content


def test_truncated_table_fails_its_hash(run):
    table = run / "tables" / "path_length.csv"
    table.write_bytes(table.read_bytes()[:-10])
    with pytest.raises(tp.errors.ResultsError, match="path_length.csv does not match the hash"):
        load_results(run)


# ---------------------------------------------------------------------------------- render
def test_render_replaces_a_symlinked_report_never_follows_it(run, tmp_path):
    victim = tmp_path / "my_notes.txt"
    victim.write_text("precious")
    (run / "report.html").unlink()
    (run / "report.html").symlink_to(victim)
    assert cli(["render", str(run)]) == 0
    assert victim.read_text() == "precious"
    assert not (run / "report.html").is_symlink()
    assert "<!DOCTYPE html>" in (run / "report.html").read_text()


def test_render_of_a_hostile_dir_writes_nothing(run, tmp_path):
    _edit(run, lambda m: m["files"].__setitem__("../evil.csv", "0" * 64))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(tp.errors.ResultsError):
        render_run(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ---------------------------------------------------------------------------------- writing
def test_existing_out_is_refused_unless_overwrite(run, model, tmp_path):
    suite = _suite(tmp_path / "suite")
    (run / "stray.bin").write_bytes(b"old")
    with pytest.raises(tp.errors.InputError, match="not empty.*--overwrite"):
        run_suite(suite, out=run, model=model, quiet=True)
    assert (run / "stray.bin").exists()
    run_suite(suite, out=run, model=model, quiet=True, overwrite=True)
    assert not (run / "stray.bin").exists()  # the whole old run was replaced
    load_results(run)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_out_that_is_a_file_or_a_symlink_is_refused(model, tmp_path):
    suite = _suite(tmp_path / "suite")
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(tp.errors.InputError, match="not a folder"):
        run_suite(suite, out=f, model=model, quiet=True)
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(tp.errors.InputError, match="symlink"):
        run_suite(suite, out=tmp_path / "link", model=model, quiet=True)
    assert list(target.iterdir()) == [] and f.read_text() == "x"


def test_a_failed_run_leaves_nothing(model, tmp_path, monkeypatch):
    from tlprobes.suites.studies import paths

    def boom(*a, **k):
        raise RuntimeError("render failed")

    monkeypatch.setattr(paths.STUDY, "render", boom, raising=False)
    out = tmp_path / "out" / "run"
    with pytest.raises(RuntimeError, match="render failed"):
        run_suite(_suite(tmp_path / "suite"), out=out, model=model, quiet=True)
    assert not out.exists() and list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("name", ["/tmp/abs_suite_name", "../../escape", "..", "a/../../b", ".hidden"])
def test_default_out_stays_under_runs(model, tmp_path, monkeypatch, name):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    report = run_suite(_suite(tmp_path / "suite", name=name), model=model, quiet=True)
    resolved = report.resolve()
    assert resolved.parent.parent == (work / "runs").resolve()
    assert not resolved.parent.name.startswith(".")
    assert safe_name(name) == resolved.parent.name


def test_run_files_are_created_not_followed(model, tmp_path, monkeypatch):
    """Even if something plants a symlink inside the fresh folder, writing refuses to follow it."""
    from tlprobes.suites import _rundir

    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    real_write_run = _rundir.write_run

    def planted(out_dir, *a, **k):
        os.symlink(victim, Path(out_dir) / "facts.json")
        return real_write_run(out_dir, *a, **k)

    monkeypatch.setattr("tlprobes.suites._run.write_run", planted)
    with pytest.raises(FileExistsError):
        run_suite(_suite(tmp_path / "suite"), out=tmp_path / "run", model=model, quiet=True)
    assert victim.read_text() == "keep" and not (tmp_path / "run").exists()
