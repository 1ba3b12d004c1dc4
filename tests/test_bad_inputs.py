"""Table-driven bad inputs, in process: every one is a clear ``TLProbesError`` (subclassing the
matching built-in) or is made right; on the CLI, one line ``tlprobes: error: ...``, exit code 2, no
traceback, and nothing loaded or computed first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tlprobes as tp
from tlprobes.cli import main as cli
from tlprobes.suites import SuiteError, load_suite

P = ["Mary saw her dog.", "John gave her a book."]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return tp.load_model("default")


def _entered_twice(m):
    s = tp.attach(m, tp.Residual())
    with s:
        with s:
            m(P[0])


def _post_init(probe, **fields):
    """Re-run a probe's own checks on fields the test run's type checker would refuse first."""
    for k, v in fields.items():
        object.__setattr__(probe, k, v)
    probe.__post_init__()


def _nested_forward(m):
    def hook(t, hook):
        m(P[1])  # a hook that calls the model

    m.add_hook("blocks.0.hook_resid_pre", hook)
    try:
        with tp.attach(m, tp.Residual()):
            m(P[0])
    finally:
        m.reset_hooks()


API_CASES = [
    # (id, call, expected error type, built-in it must also be, message regex)
    ("entered-twice", _entered_twice, tp.TLProbesError, RuntimeError, "already inside a `with`"),
    ("bytes-as-ids", lambda m: tp.run(m, [b"bytes"], tp.Residual()), tp.errors.InputError, ValueError,
     "cannot read prompts of type bytes"),
    ("int-dtype", lambda m: tp.attach(m, tp.Residual(), dtype=torch.int32), tp.TLProbesError,
     TypeError, "torch.int32 would truncate"),
    ("bad-dtype-name", lambda m: tp.run(m, P, tp.Residual(), dtype="float17"), tp.TLProbesError,
     TypeError, "'float17' is not a floating dtype"),
    ("dtype-object", lambda m: tp.run(m, P, tp.Residual(), dtype=3), TypeError, TypeError,
     "dtype"),  # a TLProbesError; the test suite's jaxtyping checker catches it one step earlier
    ("misspelt-kwarg", lambda m: tp.run(m, P, tp.Residual(), paddingside="left"), tp.TLProbesError,
     TypeError, "unknown keyword argument 'paddingside'; did you mean 'padding_side'"),
    ("unknown-kwarg", lambda m: tp.run(m, P, tp.Residual(), colour="red"), tp.TLProbesError,
     TypeError, "unknown keyword argument 'colour'"),
    ("batch-size-bool", lambda m: tp.run(m, P, tp.Residual(), batch_size=True), tp.TLProbesError,
     TypeError, "batch_size must be a positive int, got bool"),
    ("batch-size-0", lambda m: tp.run(m, P, tp.Residual(), batch_size=0), tp.errors.InputError, ValueError,
     "batch_size must be a positive int"),
    ("empty-prompt", lambda m: tp.run(m, [""], tp.Residual()), tp.errors.InputError, ValueError,
     "prompt 0 is empty"),
    ("layers-bool", lambda m: tp.run(m, P, tp.Attention(layers=[True])), tp.errors.LayerError, IndexError,
     "got True"),
    ("layers-str", lambda m: tp.run(m, P, tp.Attention(layers="first")), tp.errors.LayerError, IndexError,
     "layers='first'"),
    ("bad-device", lambda m: tp.attach(m, tp.Residual(), device="nonsense"), tp.errors.InputError,
     ValueError, "unknown device 'nonsense'"),
    ("typo-model", lambda m: tp.load_model("defualt"), tp.errors.UnknownModelError, ValueError,
     "did you mean 'default'"),
    ("not-a-probe", lambda m: tp.attach(m, "Residual"), tp.TLProbesError, TypeError,
     "is not a probe"),
    ("nested-forward", _nested_forward, tp.TLProbesError, RuntimeError, "inside another one"),
    ("run-with-hooks", lambda m: _inside(m, lambda: m.run_with_hooks(P[0])), tp.TLProbesError,
     RuntimeError, "without going through model"),
    # once a bare TLProbesError: now the subclass of the matching built-in
    ("top-k-0", lambda m: tp.LogitLens(top_k=0), tp.errors.OptionError, ValueError,
     "top_k must be a positive int, got 0"),
    ("top-k-str", lambda m: _post_init(tp.LogitLens(), top_k="5"), tp.errors.ArgumentError, TypeError,
     "top_k must be a positive int, got '5'"),
    ("lens-targets", lambda m: tp.LogitLens(targets="prev"), tp.errors.OptionError, ValueError,
     "unknown targets 'prev'"),
    ("top-k-vocab", lambda m: tp.run(m, P, tp.LogitLens(top_k=10**7)), tp.errors.OptionError,
     ValueError, "exceeds the vocabulary size"),
    ("lens-target-shape", lambda m: tp.run(m, P, tp.LogitLens(targets=torch.zeros(1, 1).long())),
     tp.errors.InputError, ValueError, r"targets has shape \(1, 1\)"),
    ("final-state", lambda m: _post_init(tp.Residual(), final_state="middle"), tp.errors.OptionError,
     ValueError,
     "unknown final_state 'middle'"),
    ("missing-capture", lambda m: tp.run(m, P, tp.Residual())["residul"],
     tp.errors.MissingCaptureError, KeyError, "no capture named 'residul'"),
]


def _inside(m, fn):
    with tp.attach(m, tp.Residual()):
        fn()


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_inputs(model, case):
    _, call, err_type, builtin, message = case
    with pytest.raises(err_type, match=message) as info:
        call(model)
    assert isinstance(info.value, builtin)


def test_errors_subclass_the_builtins():
    assert issubclass(tp.errors.SiteError, KeyError) and issubclass(tp.errors.InputError, ValueError)
    assert issubclass(tp.errors.ModelError, TypeError) and issubclass(tp.errors.ResultsError, ValueError)


def test_made_right(model):
    """What used to fail or be silently wrong now works."""
    res = tp.run(model, P, tp.Residual(), dtype="float16")  # a dtype name is accepted
    assert res.residual.resid.dtype == torch.float16
    toks = model.to_tokens(P[:1])
    with tp.attach(model, tp.Steps()) as s:  # no torch.no_grad() needed
        model(toks)
    with torch.no_grad(), tp.attach(model, tp.Steps()) as s2:
        model(toks)
    assert torch.equal(s.result.steps.angle, s2.result.steps.angle)


def test_run_with_cache_inside_attach_is_captured_or_refused(model):
    with tp.attach(model, tp.Residual()) as s:
        model(P[0])
        try:
            model.run_with_cache(P[1])
        except tp.TLProbesError as err:
            assert "without going through model" in str(err)
            return
    assert s.n_batches == 2  # captured (HookedTransformer): then it is in the result


# -------------------------------------------------------------------------------- suites
GOOD = """[suite]
name = "t"
study = "angles"

[prompts]
file = "p.txt"
target = " her"

[analysis]
controls = ["clean"]
"""


def _suite(folder: Path, text: str = GOOD, prompts: str | bytes = "Mary saw her dog.\nJohn gave her a book.\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "p.txt").write_bytes(prompts.encode() if isinstance(prompts, str) else prompts)
    (folder / "s.toml").write_text(text, encoding="utf-8")
    return folder / "s.toml"


SUITE_CASES = [
    ("alpha", GOOD.replace('controls = ["clean"]', "alpha = 7.5"), None, "alpha = 7.5 is out of range"),
    ("limit", GOOD.replace('target = " her"', 'target = " her"\nlimit = -1'), None, "limit = -1 must not be negative"),
    ("seed", GOOD + "\n[run]\nseed = -1\n", None, "seed = -1 is out of range"),
    ("batch", GOOD + "\n[run]\nbatch_size = 0\n", None, "batch_size = 0 is out of range"),
    ("dotdot", GOOD.replace('"p.txt"', '"../secret.txt"'), None, "no absolute paths, no '..'"),
    ("absolute", GOOD.replace('"p.txt"', '"/etc/passwd"'), None, "no absolute paths"),
    ("latin1-prompts", GOOD, "Mary saw her caf\xe9.\n".encode("latin-1"), r"p.txt:1 is not UTF-8 .*Latin-1"),
    ("target-absent", GOOD, "Mary saw her dog.\nJohn gave him a book.\n", r"p.txt:2: target ' her'"),
]


@pytest.mark.parametrize("case", SUITE_CASES, ids=[c[0] for c in SUITE_CASES])
def test_suite_bad_inputs(tmp_path, case):
    _, text, prompts, message = case
    kw = {} if prompts is None else {"prompts": prompts}
    (tmp_path / "secret.txt").write_text("TOP SECRET her\n")
    with pytest.raises(SuiteError, match=message) as info:
        load_suite(_suite(tmp_path / "suite", text, **kw))
    assert "TOP SECRET" not in str(info.value) and "root:" not in str(info.value)


def test_prompt_file_symlinked_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "secret.txt").write_text("TOP SECRET her\n")
    path = _suite(tmp_path / "suite")
    (tmp_path / "suite" / "p.txt").unlink()
    (tmp_path / "suite" / "p.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(SuiteError, match="outside the suite's folder") as info:
        load_suite(path)
    assert "TOP SECRET" not in str(info.value)


def test_latin1_suite_file(tmp_path):
    path = _suite(tmp_path / "suite")
    path.write_bytes(GOOD.replace('"t"', '"caf\xe9"').encode("latin-1"))
    with pytest.raises(SuiteError, match="not UTF-8"):
        load_suite(path)


def test_u2028_does_not_split_a_prompt(tmp_path):
    suite = load_suite(_suite(tmp_path / "s", prompts="Mary saw her\u2028dog.\nJohn gave her a book.\n"))
    assert suite.prompts == ["Mary saw her\u2028dog.", "John gave her a book."]


def test_error_quotes_only_the_offending_line(tmp_path):
    prompts = "Mary saw her dog.\nJohn gave her a book.\nthe third line has no target\n"
    with pytest.raises(SuiteError) as info:
        load_suite(_suite(tmp_path / "s", prompts=prompts))
    msg = str(info.value)
    assert "p.txt:3" in msg and "the third line" in msg and "Mary" not in msg and "John" not in msg


# -------------------------------------------------------------------------------- CLI
@pytest.fixture
def no_model(monkeypatch, tmp_path):
    """Fail the test if a CLI case loads a model: validation must come first. Runs in ``tmp_path``
    so that a default ``runs/`` folder never lands in the repository."""
    import tlprobes.models

    monkeypatch.chdir(tmp_path)

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the bad input was found")

    monkeypatch.setattr(tlprobes.models, "load_model", refuse)


def _broken_model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "broken_model"
    d.mkdir()
    (d / "config.json").write_text("{not json")
    return d


def _fake_gguf(tmp_path: Path) -> Path:
    p = tmp_path / "model.gguf"
    p.write_bytes(b"PK\x03\x04 not a gguf")
    return p


def _manifest_dir(tmp_path: Path, content: str) -> Path:
    d = tmp_path / "badrun"
    d.mkdir()
    (d / "manifest.json").write_text(content)
    return d


CLI_CASES = [
    ("no-suite", lambda t: ["run", "rotation_angels"], "no suite 'rotation_angels'; did you mean 'rotation_angles'"),
    ("device", lambda t: ["run", str(_suite(t / "s")), "--device", "nonsense"], "unknown device 'nonsense'"),
    ("batch-0", lambda t: ["run", str(_suite(t / "s")), "--batch-size", "0"], "'0' must be a positive integer"),
    ("batch-x", lambda t: ["run", str(_suite(t / "s")), "--batch-size", "x"], "'x' is not an integer"),
    ("out-file", lambda t: ["run", str(_suite(t / "s")), "--out", str(_suite(t / "s"))], "exists and is not a folder"),
    ("config", lambda t: ["run", str(_suite(t / "s")), "--model", str(_broken_model_dir(t))], "config.json is unreadable or not valid JSON"),
    ("model-file", lambda t: ["run", str(_suite(t / "s")), "--model", str(_suite(t / "s"))], "is a file"),
    ("not-gguf", lambda t: ["run", str(_suite(t / "s")), "--model", str(_fake_gguf(t))], "is not a GGUF file"),
    ("latin1", lambda t: ["run", str(_suite(t / "s", prompts=b"caf\xe9 her\n"))], "not UTF-8"),
    ("seed", lambda t: ["run", str(_suite(t / "s", GOOD + "\n[run]\nseed = -1\n"))], "seed = -1 is out of range"),
    ("unknown-cmd", lambda t: ["frobnicate"], "invalid choice: 'frobnicate'"),
    ("render-missing", lambda t: ["render", str(t / "nope")], "is not a folder"),
    ("render-list", lambda t: ["render", str(_manifest_dir(t, "[]"))], "JSON list, not an object"),
    ("render-files", lambda t: ["render", str(_manifest_dir(t, '{"tlprobes_run": 2, "files": {}}'))], "digest"),
    ("render-old", lambda t: ["render", str(_manifest_dir(t, '{"tlprobes_run": 1}'))], "layout tlprobes_run=1"),
    ("suites-dir", lambda t: ["list", "--suites", str(t / "nope")], "is not a folder"),
]
if not torch.cuda.is_available():
    CLI_CASES.append(("cuda", lambda t: ["run", str(_suite(t / "s")), "--device", "cuda"], "no CUDA GPU"))


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_user_errors(tmp_path, capsys, no_model, case):
    _, argv, message = case
    assert cli(argv(tmp_path)) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tlprobes: error: "), out.err
    assert "Traceback" not in out.err + out.out
    import re

    assert re.search(message, lines[0]), lines[0]


def test_cli_out_dir_refused_before_the_model(tmp_path, capsys, no_model):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.html").write_text("old run")
    assert cli(["run", str(_suite(tmp_path / "s")), "--out", str(tmp_path / "old")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "old" / "report.html").read_text() == "old run"


def test_cli_debug_shows_the_traceback(capsys):
    assert cli(["--debug", "run", "no_such_suite"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_cli_internal_error_exits_1_with_a_pointer(tmp_path, capsys, monkeypatch):
    import tlprobes.suites

    monkeypatch.chdir(tmp_path)

    def bug(*a, **k):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(tlprobes.suites, "load_suite", bug)
    assert cli(["run", str(_suite(tmp_path / "s"))]) == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError" in err and "--debug" in err and "Traceback" not in err


def test_cli_list_shows_broken_suites_and_extra_folders(tmp_path, capsys, monkeypatch):
    extra = tmp_path / "mine"
    _suite(extra)
    (extra / "s.toml").rename(extra / "good_one.toml")
    (extra / "broken.toml").write_text("[suite\nname=")
    local = tmp_path / "cwd" / "probes"
    _suite(local)
    (local / "s.toml").rename(local / "local_one.toml")
    monkeypatch.chdir(tmp_path / "cwd")
    assert cli(["list", "--suites", str(extra)]) == 0
    out = capsys.readouterr().out
    assert "good_one" in out and "local_one" in out and "rotation_angles" in out
    assert "broken" in out and "BROKEN" in out and "not valid TOML" in out


def test_cli_version_and_help_do_not_import_torch():
    import subprocess
    import sys

    src = str(Path(tp.__file__).resolve().parents[1])
    code = ("import sys; from tlprobes.cli import main\n"
            "for argv in (['--version'], ['--help'], ['run', '--help']):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
    assert "tlprobes 0.1.0" in out.stdout
