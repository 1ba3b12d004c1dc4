"""Probe suites: declarative study files (TOML) and their validation.

A suite names a study, the model, the prompt set and the analysis settings::

    [suite]
    name = "rotation-angles"
    title = "Rotation of ' her' across layers (seed 003)"
    study = "angles"

    [model]
    name = "default"            # overridden by `tlprobes run --model`

    [prompts]
    file = "prompts/her_sentences.txt"
    target = " her"

    [run]
    batch_size = 16

    [analysis]
    controls = ["course", "clean"]

A large prompt set can come from a dataset instead of ``[prompts] file`` (read by
:func:`tlprobes._datasets.read_prompts`: text, JSONL, CSV/TSV, Parquet or a HF ``datasets`` folder; a
relative path is relative to the suite file, an absolute one is taken as given); ``[prompts] target``
still applies, and the dataset's other columns are the per-prompt columns a TSV prompt file gives::

    [dataset]
    path = "data/wiki.parquet"
    column = "text"             # optional when the rows hold one text column
    limit = 100000              # optional: the first N prompts

Loading validates everything a run needs before any model is loaded: unknown sections or keys, wrong
types, a missing prompt file, and a target word absent from a prompt fail with the file, the line (or
key) and what is allowed::

    >>> suite = load_suite("probes/rotation_angles.toml")   # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import InputError, SuiteError, TLProbesError, choices
from ._registry import get_study

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "Suite", "SuiteError", "load_suite", "with_dataset", "suites_dir", "suite_dirs", "suite_files", "find_suite",
    "list_suites",
]


_ANY = object()

#: section -> key -> (type or tuple of types, default); ``_ANY`` for free-form tables.
_SCHEMA: dict[str, dict[str, tuple[Any, Any]]] = {
    "suite": {
        "name": (str, None),
        "title": (str, ""),
        "description": (str, ""),
        "study": (str, None),
        "seed_study": (str, ""),
    },
    "model": {
        "name": (str, "default"),
        "compat": (bool, False),
        "second": (str, ""),  # a second model (Procrustes between embedding spaces)
        "dtype": (str, ""),
    },
    "prompts": {
        "file": (str, None),
        "target": (str, ""),
        "column": (str, "sentence"),
        "limit": (int, 0),
    },
    "run": {
        "batch_size": (int, 16),
        "padding_side": (str, "right"),
        "seed": (int, 0),
        "device": (str, "cpu"),
    },
    "dataset": {  # prompts from a dataset instead of [prompts] file
        "path": (str, None),
        "column": (str, ""),
        "limit": (int, 0),
        "format": (str, ""),
    },
    "analysis": {},  # checked against the study's own schema
}
_REQUIRED = {"suite": ("name", "study"), "dataset": ("path",)}
#: numeric keys (any section) -> (low, high, what): checked after the type
_OPEN_UNIT = (0.0, 1.0, "a fraction strictly between 0 and 1")
_POSITIVE = (1, None, "an integer >= 1")
_RANGES: dict[str, tuple[Any, Any, str]] = {
    "alpha": _OPEN_UNIT,
    "test_fraction": _OPEN_UNIT,
    "batch_size": _POSITIVE,
    "top_k": _POSITIVE,
    "max_points": _POSITIVE,
    "csls_k": _POSITIVE,
    "n_perm": _POSITIVE,
    "n_components": _POSITIVE,
    "rsa_items": _POSITIVE,
    "plot_words": _POSITIVE,
    "seed": (0, 2**32 - 1, "an integer from 0 to 2**32 - 1"),
    "tsne_perplexity": (0.0, None, "a number > 0"),
    "isf_beta": (0.0, None, "a number > 0"),
}
_PADDING = ("right", "left")


@dataclass(frozen=True)
class Suite:
    """A validated suite: its sections with defaults filled in, and its prompts."""

    path: Path
    name: str
    title: str
    description: str
    study: str
    model: dict[str, Any]
    prompts_file: Path
    prompts: list[str]
    columns: dict[str, list[str]]
    target: str
    run: dict[str, Any]
    analysis: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    #: where the prompts came from when they came from a dataset (``PromptStream.to_dict()``)
    dataset: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The resolved settings, for the run manifest."""
        return {
            "path": str(self.path),
            "name": self.name,
            "title": self.title,
            "study": self.study,
            "model": self.model,
            "prompts_file": str(self.prompts_file),
            "n_prompts": len(self.prompts),
            "dataset": self.dataset,
            "target": self.target,
            "run": self.run,
            "analysis": self.analysis,
        }


def _line_of(text: str, section: str | None, key: str) -> int | None:
    """Best-effort line number of ``key`` (inside ``[section]``) in the TOML text."""
    current = None
    for i, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        m = re.match(r"^\[([^\]]+)\]", stripped)
        if m:
            current = m.group(1).strip()
            if section is None and current == key:
                return i
            continue
        if current == section and re.match(rf"^{re.escape(key)}\s*=", stripped):
            return i
    return None


def _type_name(t: Any) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return t.__name__


def _check_value(where: str, key: str, value: Any, want: Any) -> None:
    if want is _ANY:
        return
    if isinstance(want, list):  # a list whose elements have type want[0]
        if not (isinstance(value, list) and all(isinstance(v, want[0]) for v in value)):
            raise SuiteError(f"{where}: {key} must be a list of {want[0].__name__}, got {value!r}")
        return
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise SuiteError(
            f"{where}: {key} must be {_type_name(want)}, got {type(value).__name__} {value!r}"
        )
    _check_range(where, key, value)


def _check_range(where: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise SuiteError(f"{where}: {key} must be a finite number, got {value!r}")
    if key in _RANGES:
        lo, hi, what = _RANGES[key]
        strict = isinstance(lo, float)
        bad = (value <= lo if strict else value < lo) or (
            hi is not None and (value >= hi if strict else value > hi))
        if bad:
            raise SuiteError(f"{where}: {key} = {value!r} is out of range; it must be {what}")
    elif value < 0:
        raise SuiteError(f"{where}: {key} = {value!r} must not be negative")


def _decode(path: Path, where: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise SuiteError(
            f"{where}: {path.name}:{line} is not UTF-8 text (byte 0x{data[err.start]:02x}); save the "
            "file as UTF-8 (it may be Latin-1 / cp1252)"
        ) from None


def _lines(text: str) -> list[str]:
    """Lines split on "\n" only (U+2028, form feeds ... stay inside a prompt); "\r" is dropped."""
    return [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]


def _read_prompts(path: Path, column: str, where: str) -> tuple[list[str], dict[str, list[str]], list[int]]:
    """Prompts, extra columns, and each prompt's line number in the file."""
    text = _decode(path, where)
    if path.suffix == ".tsv":
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t"))
        except csv.Error as err:
            raise SuiteError(f"{where}: prompt file {path.name} is not a valid TSV table ({err})") from None
        if not rows:
            raise SuiteError(f"{where}: prompt file {path.name} has no rows")
        if column not in rows[0]:
            raise SuiteError(
                f"{where}: prompt file {path.name} has no column {column!r}; columns: {choices(rows[0])}"
            )
        for i, row in enumerate(rows):
            if None in row or any(v is None for v in row.values()):
                raise SuiteError(f"{path}:{i + 2}: row {i} has a different number of tab-separated "
                                 f"fields than the header ({len(rows[0])} columns)")
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        return cols[column], cols, [i + 2 for i in range(len(rows))]
    prompts, numbers = [], []
    for i, ln in enumerate(_lines(text), 1):
        if ln.strip() and not ln.lstrip().startswith("#"):
            prompts.append(ln)
            numbers.append(i)
    if not prompts:
        raise SuiteError(f"{where}: prompt file {path.name} holds no prompts")
    return prompts, {}, numbers


def _word_in(word: str, text: str) -> bool:
    """Whether ``word`` (with its leading space, if any) occurs as a whole word in ``text``."""
    core = word.strip()
    if word.startswith(" "):
        pattern = rf"(?<=\s){re.escape(core)}(?![\w'])"
    else:
        pattern = rf"(?<![\w]){re.escape(core)}(?![\w'])"
    return re.search(pattern, text) is not None


def load_suite(path: str | Path, *, study_schema: dict[str, tuple[Any, Any]] | None = None) -> Suite:
    """Read and validate a suite file (see the module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file {str(path)!r} does not exist; available suites: {choices(list_suites())}")
    text = _decode(path, str(path))
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SuiteError(f"{path}: not valid TOML: {err}") from None

    def where(section: str | None, key: str) -> str:
        line = _line_of(text, section, key)
        return f"{path}:{line}" if line else f"{path} [{section}] {key}"

    for section in data:
        if section not in _SCHEMA:
            raise SuiteError(
                f"{where(None, section)}: unknown section [{section}]; valid sections: "
                f"{choices(_SCHEMA)}"
            )
        if not isinstance(data[section], dict):
            raise SuiteError(f"{where(None, section)}: [{section}] must be a table")
    for section, required in _REQUIRED.items():
        for key in required:
            if key not in data.get(section, {}) and (section != "dataset" or section in data):
                raise SuiteError(f"{path}: [{section}] needs the key {key!r}")
    if "dataset" not in data and "file" not in data.get("prompts", {}):
        raise SuiteError(f"{path}: [prompts] needs the key 'file' (or a [dataset] section)")
    if "dataset" in data and "file" in data.get("prompts", {}):
        raise SuiteError(f"{where('prompts', 'file')}: give the prompts once: [prompts] file or "
                         "[dataset] path, not both")

    resolved: dict[str, dict[str, Any]] = {}
    for section, keys in _SCHEMA.items():
        given = data.get(section, {})
        if section == "analysis":
            continue
        for key, value in given.items():
            if key not in keys:
                raise SuiteError(
                    f"{where(section, key)}: unknown key {key!r} in [{section}]; valid keys: "
                    f"{choices(keys)}"
                )
            _check_value(where(section, key), key, value, keys[key][0])
        resolved[section] = {k: given.get(k, default) for k, (_, default) in keys.items()}

    study_name = resolved["suite"]["study"]
    study = get_study(study_name, where=where("suite", "study"))
    schema = study_schema if study_schema is not None else study.schema
    analysis = dict(data.get("analysis", {}))
    for key, value in analysis.items():
        if key not in schema:
            raise SuiteError(
                f"{where('analysis', key)}: unknown key {key!r} in [analysis] for study "
                f"{study_name!r}; valid keys: {choices(schema)}"
            )
        _check_value(where("analysis", key), key, value, schema[key][0])
    analysis = {k: analysis.get(k, default) for k, (_, default) in schema.items()}

    run = resolved["run"]
    if run["padding_side"] not in _PADDING:
        raise SuiteError(
            f"{where('run', 'padding_side')}: padding_side {run['padding_side']!r}; valid: "
            f"{choices(_PADDING)}"
        )
    if run["batch_size"] < 1:
        raise SuiteError(f"{where('run', 'batch_size')}: batch_size must be >= 1")

    dataset = None
    if "dataset" in data:
        ds = resolved["dataset"]
        given = Path(ds["path"]).expanduser()
        pfile = given if given.is_absolute() else path.resolve().parent / given
        prompts, columns, numbers, dataset = _read_dataset(
            pfile, ds["column"] or None, ds["limit"] or None, ds["format"] or None,
            where("dataset", "path"))
    else:
        pfile = _prompt_path(path, resolved["prompts"]["file"], where("prompts", "file"))
        prompts, columns, numbers = _read_prompts(
            pfile, resolved["prompts"]["column"], where("prompts", "file"))
    if resolved["prompts"]["limit"]:
        n = resolved["prompts"]["limit"]
        prompts, numbers = prompts[:n], numbers[:n]
        columns = {k: v[:n] for k, v in columns.items()}
    target = resolved["prompts"]["target"]
    _check_target(target, prompts, pfile, numbers, where("prompts", "target"))
    return Suite(
        path=path,
        name=resolved["suite"]["name"],
        title=resolved["suite"]["title"] or resolved["suite"]["name"],
        description=resolved["suite"]["description"],
        study=study_name,
        model=resolved["model"],
        prompts_file=pfile,
        prompts=prompts,
        columns=columns,
        target=target,
        run=run,
        analysis=analysis,
        raw=data,
        dataset=dataset,
    )


def _check_target(target: str, prompts: list[str], pfile: Path, numbers: list[Any], where: str) -> None:
    if target:
        for i, prompt in enumerate(prompts):
            if not _word_in(target, prompt):
                raise SuiteError(
                    f"{pfile}:{numbers[i]}: target {target!r} (from {where}) "
                    f"is absent from prompt {i}: {prompt!r}"
                )


def _read_dataset(
    source: Path, column: str | None, limit: int | None, fmt: str | None, where: str
) -> tuple[list[str], dict[str, list[str]], list[Any], dict[str, Any]]:
    """Prompts, per-prompt columns (as text, like a TSV's), row labels and the dataset's record."""
    from .._datasets import read_prompts

    try:
        stream = read_prompts(source, column=column, limit=limit, format=fmt)
    except TLProbesError as err:
        raise SuiteError(f"{where}: {err}") from None
    prompts: list[str] = []
    columns: dict[str, list[str]] = {c: [] for c in stream.columns}
    for row in stream.rows():
        prompts.append(row[stream.column])
        for c in columns:
            value = row.get(c)
            columns[c].append("" if value is None else str(value))
    if not prompts:
        raise SuiteError(f"{where}: dataset {str(source)!r} holds no prompts")
    return prompts, columns, [f"row {i}" for i in range(len(prompts))], stream.to_dict()


def with_dataset(suite: Suite, source: str | Path | None = None, *, column: str | None = None,
                 limit: int | None = None) -> Suite:
    """``suite`` with its prompts read from a dataset: ``tlprobes run SUITE --dataset PATH --column C
    --limit N``. Without ``source`` the suite's own ``[dataset]`` is read again with the new column
    or limit (a suite with a prompt file keeps its first ``limit`` prompts). The suite's target word
    is checked against the new prompts.
    """
    import dataclasses

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SuiteError(f"limit {limit!r} is not valid; give a positive integer")
    fmt = None
    if source is None and suite.dataset is not None:
        source, fmt = suite.dataset["path"], suite.dataset["format"]
        column = column or suite.dataset["column"]
        limit = limit or suite.dataset["limit"]
    if source is None:
        if column is not None:
            raise SuiteError(f"column {column!r} picks a column of a dataset, but suite "
                             f"{suite.name!r} reads the prompt file {str(suite.prompts_file)!r}; "
                             "give a dataset too (--dataset PATH)")
        if limit is None:
            return suite
        return dataclasses.replace(suite, prompts=suite.prompts[:limit],
                                   columns={k: v[:limit] for k, v in suite.columns.items()})
    prompts, columns, numbers, dataset = _read_dataset(
        Path(source).expanduser(), column, limit, fmt, "--dataset")
    _check_target(suite.target, prompts, Path(source), numbers, f"{suite.path} [prompts] target")
    return dataclasses.replace(suite, prompts_file=Path(source), prompts=prompts, columns=columns,
                               dataset=dataset)


def _prompt_path(suite_path: Path, given: str, where: str) -> Path:
    """The prompt file, relative to the suite file and inside the suite's folder (symlinks resolved)."""
    folder = suite_path.resolve().parent
    raw = Path(given)
    if raw.is_absolute() or ".." in raw.parts:
        raise SuiteError(
            f"{where}: prompt file {given!r} must be a path relative to the suite file, inside its "
            f"folder {str(folder)!r} (no absolute paths, no '..')"
        )
    pfile = (folder / raw).resolve()
    if not pfile.is_relative_to(folder):
        raise SuiteError(
            f"{where}: prompt file {given!r} leads outside the suite's folder {str(folder)!r} "
            "(through a symlink); copy the file next to the suite"
        )
    if not pfile.is_file():
        raise SuiteError(f"{where}: prompt file {given!r} not found (looked for {pfile})")
    if pfile.suffix not in (".txt", ".tsv"):
        raise SuiteError(f"{where}: prompt file {given!r} must be a .txt (one prompt a line) or "
                         ".tsv (table with a header) file")
    return pfile


def suites_dir() -> Path:
    """The folder holding the suites: the repo's ``probes/`` (or the copy shipped in the wheel)."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[3] / "probes", here.parents[1] / "_probes"):
        if candidate.is_dir():
            return candidate
    raise InputError("cannot find the probes/ folder with the suites")


def suite_dirs(extra: Sequence[str | Path] = ()) -> list[Path]:
    """Where suites are looked up, first match wins: ``extra`` folders (``--suites DIR``),
    ``./probes`` in the working directory, then the shipped ``probes/``."""
    out: list[Path] = []
    cands = [Path(d) for d in extra] + [Path.cwd() / "probes"]
    try:
        cands.append(suites_dir())
    except InputError:
        pass
    for d in cands:
        if d.is_dir() and all(d.resolve() != o.resolve() for o in out):
            out.append(d)
    return out


def suite_files(extra: Sequence[str | Path] = ()) -> dict[str, Path]:
    """Suite name -> file, over :func:`suite_dirs` (earlier folders shadow later ones)."""
    found: dict[str, Path] = {}
    for d in suite_dirs(extra):
        for p in sorted(d.glob("*.toml")):
            found.setdefault(p.stem, p)
    return dict(sorted(found.items()))


def list_suites(extra: Sequence[str | Path] = ()) -> list[str]:
    """Names of the suites in ``extra`` folders, ``./probes`` and the shipped ``probes/``."""
    return list(suite_files(extra))


def find_suite(name_or_path: str | Path, extra: Sequence[str | Path] = ()) -> Path:
    """A suite by path, or by name (``angles`` -> ``probes/angles.toml``, see :func:`suite_dirs`)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.exists():
        raise SuiteError(f"suite {str(name_or_path)!r} is not a file; give a .toml suite file or a name")
    files = suite_files(extra)
    if str(name_or_path) in files:
        return files[str(name_or_path)]
    if p.suffix == ".toml" and p.stem in files:  # "angles.toml" given from another folder
        return files[p.stem]
    import difflib

    close = difflib.get_close_matches(str(name_or_path), list(files), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise SuiteError(f"no suite {str(name_or_path)!r}{hint} available: {choices(files)}")
