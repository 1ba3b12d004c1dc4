"""Run directories: what ``tlprobes run`` writes and :func:`load_results` reads back (no pickle).

::

    runs/angles/
      manifest.json          suite, model, mode, TL version, package versions, seed, timings, file hashes
      report.html            self-contained report
      tables/*.csv           tidy tables (one row per layer x group x statistic)
      facts.json             small numbers and labels
      view_data.safetensors  the small arrays the report draws from
      captures.safetensors   captured arrays (only with --save-arrays)

What is guaranteed:

- A run is written into a fresh temporary sibling folder (``.NAME.tmp-XXXX``) and renamed into place
  only when complete, report included; a failed run leaves nothing behind. Files are created with
  ``O_EXCL | O_NOFOLLOW`` inside that fresh folder, so nothing is ever written through a symlink.
- An existing non-empty output folder is refused unless ``overwrite=True`` (``--overwrite``), which
  replaces the whole old run (nothing of it stays behind).
- Every file's SHA-256 is in the manifest and the manifest carries a digest of itself: a truncated or
  edited file or manifest fails to load with a clear :class:`~tlprobes.ResultsError`.
- Every path the manifest lists is confined to the run directory: relative, no ``..``, one of the
  known kinds, a regular file reached without following any symlink.

    >>> res = tp.load_results("runs/angles")            # doctest: +SKIP
    >>> res.tables["angles"].head()                      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._errors import InputError, ResultsError, choices
from ._study import StudyOutput

__all__ = [
    "RunResults", "write_run", "load_results", "package_versions", "run_directory",
    "write_file_atomic", "safe_name",
]

MANIFEST = "manifest.json"
LAYOUT = 2  # manifest["tlprobes_run"]: 2 adds the manifest digest
_PACKAGES = ("tlprobes", "transformer-lens", "torch", "transformers", "numpy", "scipy",
             "scikit-learn", "pandas", "circuitsvis", "matplotlib")
_TABLE = re.compile(r"^tables/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\.csv$")
_ARRAYS = ("view_data.safetensors", "captures.safetensors")
_KINDS = ["tables/<name>.csv", "facts.json", *_ARRAYS]
_MAX_MANIFEST = 16 * 2**20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=True).encode("ascii")


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest's canonical JSON, without its own ``digest`` key."""
    return "sha256:" + _sha256(_canonical({k: v for k, v in manifest.items() if k != "digest"}))


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return save(clean)


def safe_name(name: str) -> str:
    """A folder name made from a suite name: ``[A-Za-z0-9._-]`` only, never ``.``/``..``/hidden."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).lstrip(".")
    return clean[:100] or "run"


@dataclass
class RunResults:
    """A run read back from disk."""

    path: Path
    manifest: dict[str, Any]
    tables: dict[str, Any]
    facts: dict[str, Any]
    view_data: dict[str, torch.Tensor]
    captures: dict[str, torch.Tensor] = field(default_factory=dict)

    def output(self) -> StudyOutput:
        return StudyOutput(tables=self.tables, view_data=self.view_data, arrays=self.captures,
                           facts=self.facts)

    def __repr__(self) -> str:
        return (f"RunResults({self.path}, study={self.manifest.get('suite', {}).get('study')!r}, "
                f"tables={list(self.tables)})")


# ------------------------------------------------------------------------------------ writing
def _create(path: Path, data: bytes) -> None:
    """Create a new file (never an existing one, never through a symlink)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def write_file_atomic(directory: Path, name: str, data: bytes) -> Path:
    """Write ``directory/name`` by renaming a fresh temporary file onto it.

    If ``name`` is a symlink, the link itself is replaced: the file it pointed to is never touched.
    """
    directory = Path(directory)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return directory / name


def check_out_dir(out: str | Path, *, overwrite: bool = False) -> Path:
    """Validate an output folder before any work: not a file, not a symlink, empty unless overwrite."""
    out = Path(out)
    if os.path.islink(out):
        raise InputError(f"output folder {str(out)!r} is a symlink; give a real folder path")
    if out.exists():
        if not out.is_dir():
            raise InputError(f"output path {str(out)!r} exists and is not a folder; choose another --out")
        if any(out.iterdir()) and not overwrite:
            raise InputError(
                f"output folder {str(out)!r} already exists and is not empty; choose another --out, "
                "or pass --overwrite (overwrite=True) to replace the whole old run"
            )
    parent = out.parent
    for anc in (parent, *parent.parents):
        if anc.exists():
            if not anc.is_dir():
                raise InputError(f"cannot create {str(out)!r}: {str(anc)!r} is not a folder")
            if not os.access(anc, os.W_OK | os.X_OK):
                raise InputError(f"cannot create {str(out)!r}: folder {str(anc)!r} is not writable")
            break
    return out


@contextlib.contextmanager
def run_directory(out: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``out``; on success rename it to ``out``.

    On any error (or interrupt) the temporary folder is removed and ``out`` is left as it was.
    """
    out = check_out_dir(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        old = None
        if os.path.lexists(out):
            check_out_dir(out, overwrite=overwrite)  # re-check: it may have changed meanwhile
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rmdir(old)
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError as err:
            if old is not None:
                os.rename(old, out)
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise InputError(f"output folder {str(out)!r} appeared while the run was written; "
                                 "choose another --out") from None
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_run(out_dir: str | Path, output: StudyOutput, manifest: dict[str, Any], *,
              save_captures: bool = False) -> dict[str, str]:
    """Write tables, facts and arrays, then the manifest (file hashes and its own digest).

    ``out_dir`` must be a fresh, empty folder (see :func:`run_directory`); files are created
    exclusively, never through a symlink. Returns the file hashes.
    """
    out = Path(out_dir)
    files: dict[str, bytes] = {}
    for name, frame in output.tables.items():
        rel = f"tables/{name}.csv"
        if not _TABLE.match(rel):
            raise InputError(f"table name {name!r} is not a safe file name ([A-Za-z0-9_.-])")
        buf = io.StringIO()
        frame.to_csv(buf, index=False)
        files[rel] = buf.getvalue().encode("utf-8")
    files["facts.json"] = json.dumps(output.facts, indent=2, default=_json_default).encode("utf-8")
    files["view_data.safetensors"] = _safetensors_bytes(output.view_data)
    if save_captures and output.arrays:
        files["captures.safetensors"] = _safetensors_bytes(output.arrays)
    if any(k.startswith("tables/") for k in files):
        os.mkdir(out / "tables")
    hashes = {}
    for rel, data in files.items():
        _create(out / rel, data)
        hashes[rel] = _sha256(data)
    text = json.dumps({**manifest, "tlprobes_run": LAYOUT, "files": hashes}, default=_json_default)
    clean = json.loads(text)
    clean["digest"] = manifest_digest(clean)
    _create(out / MANIFEST, json.dumps(clean, indent=2).encode("utf-8"))
    return hashes


# ------------------------------------------------------------------------------------ reading
def _read_confined(root: Path, rel: str, limit: int | None = None) -> bytes:
    """Read ``root/rel`` without following any symlink (in any component) or leaving ``root``."""
    parts = rel.split("/")
    dir_fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for part in parts[:-1]:
            try:
                nfd = os.open(part, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW,
                              dir_fd=dir_fd)
            except OSError:
                raise ResultsError(f"{root / rel}: folder {part!r} is missing or is a symlink; the "
                                   "run directory may only hold real folders") from None
            os.close(dir_fd)
            dir_fd = nfd
        try:
            st = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise ResultsError(
                f"{root / rel} is missing; the manifest lists it (the run directory is incomplete)"
            ) from None
        if stat.S_ISLNK(st.st_mode):
            raise ResultsError(f"{root / rel} is a symlink; a run directory may only hold regular "
                               "files (refusing to follow it)")
        if not stat.S_ISREG(st.st_mode):
            raise ResultsError(f"{root / rel} is not a regular file")
        if limit is not None and st.st_size > limit:
            raise ResultsError(f"{root / rel} is {st.st_size} bytes, larger than a manifest can be")
        fd = os.open(parts[-1], os.O_RDONLY | _NOFOLLOW, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as fh:
            return fh.read()
    finally:
        os.close(dir_fd)


def _check_rel(mpath: Path, rel: Any) -> str:
    if not isinstance(rel, str):
        raise ResultsError(f"{mpath} lists a file name that is not a string: {rel!r}")
    if rel in ("facts.json", *_ARRAYS) or _TABLE.match(rel):
        return rel
    raise ResultsError(
        f"{mpath} lists an unexpected file {rel!r} (paths must stay inside the run directory); "
        f"known kinds: {choices(_KINDS)}"
    )


def _load_manifest(root: Path) -> tuple[Path, dict[str, Any]]:
    mpath = root / MANIFEST
    if not root.is_dir():
        raise ResultsError(f"{str(root)!r} is not a folder; give a run directory written by "
                           "`tlprobes run`")
    if not os.path.lexists(mpath):
        raise ResultsError(f"{root} is not a tlprobes run directory: {MANIFEST} is missing")
    raw = _read_confined(root, MANIFEST, limit=_MAX_MANIFEST)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ResultsError(f"{mpath} is not UTF-8 text; the manifest is binary or corrupted") from None
    except json.JSONDecodeError as err:
        raise ResultsError(f"{mpath} is not valid JSON ({err}); the manifest was truncated or "
                           "edited") from None
    except RecursionError:
        raise ResultsError(f"{mpath} is nested too deeply to be a tlprobes manifest") from None
    if not isinstance(manifest, dict):
        raise ResultsError(f"{mpath} holds a JSON {type(manifest).__name__}, not an object; not a "
                           "tlprobes run manifest")
    layout = manifest.get("tlprobes_run")
    if layout != LAYOUT:
        raise ResultsError(
            f"{mpath} has layout tlprobes_run={layout!r}; this tlprobes reads layout {LAYOUT} "
            "(re-run the suite with this version to regenerate the run directory)"
        )
    digest = manifest.get("digest")
    try:
        want = manifest_digest(manifest)
    except (TypeError, ValueError, RecursionError):
        want = None
    if digest != want:
        raise ResultsError(f"{mpath} does not match its digest: the manifest was edited after the "
                           "run; re-run the suite to regenerate it")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ResultsError(f"{mpath} has no (or an empty) 'files' table; not a tlprobes run manifest")
    suite = manifest.get("suite")
    if not isinstance(suite, dict) or not isinstance(suite.get("study"), str):
        raise ResultsError(f"{mpath} lacks suite.study; not a tlprobes run manifest")
    return mpath, manifest


def load_results(path: str | Path) -> RunResults:
    """Read a run directory back (tables as pandas DataFrames, arrays as tensors), checking hashes."""
    import pandas as pd
    from safetensors.torch import load

    root = Path(path)
    mpath, manifest = _load_manifest(root)
    tables: dict[str, Any] = {}
    facts: dict[str, Any] = {}
    arrays: dict[str, dict[str, torch.Tensor]] = {"view_data": {}, "captures": {}}
    for rel, digest in manifest["files"].items():
        rel = _check_rel(mpath, rel)
        data = _read_confined(root, rel)
        if _sha256(data) != digest:
            raise ResultsError(
                f"{root / rel} does not match the hash in {mpath}: the file was truncated or edited "
                "after the run; re-run the suite to regenerate it"
            )
        where = root / rel
        if rel.startswith("tables/"):
            tables[rel[len("tables/"):-len(".csv")]] = _parse(
                where, "a UTF-8 CSV table", lambda d: pd.read_csv(io.StringIO(d.decode("utf-8"))),
                data)
        elif rel == "facts.json":
            facts = _parse(where, "a JSON object", lambda d: json.loads(d.decode("utf-8")), data)
            if not isinstance(facts, dict):
                raise ResultsError(f"{where} holds a JSON {type(facts).__name__}, not an object")
        else:
            arrays[rel[: -len(".safetensors")]] = _parse(where, "a safetensors file", load, data)
    if "view_data.safetensors" not in manifest["files"]:
        raise ResultsError(f"{mpath} does not list view_data.safetensors; the run is incomplete")
    return RunResults(path=root, manifest=manifest, tables=tables, facts=facts,
                      view_data=arrays["view_data"], captures=arrays["captures"])


def _parse(where: Path, kind: str, fn: Callable[[bytes], Any], data: bytes) -> Any:
    if not data:
        raise ResultsError(f"{where} is empty; expected {kind}")
    try:
        return fn(data)
    except RecursionError:
        raise ResultsError(f"{where} is nested too deeply; expected {kind}") from None
    except Exception as err:  # pandas / json / safetensors raise their own types
        raise ResultsError(f"{where} is not {kind} ({type(err).__name__}: {err})") from None
