"""Run directories: what ``tlprobes run`` writes and :func:`load_results` reads back (no pickle).

::

    runs/angles/
      manifest.json          suite, model, mode, TL version, package versions, seed, timings, file hashes
      report.html            self-contained report
      tables/*.csv           tidy tables (one row per layer x group x statistic)
      facts.json             small numbers and labels
      view_data.safetensors  the small arrays the report draws from
      captures.safetensors   captured arrays (only with --save-arrays)

Every file's SHA-256 is in the manifest; a truncated or edited file fails to load with a clear error.

    >>> res = tp.load_results("runs/angles")            # doctest: +SKIP
    >>> res.tables["angles"].head()                      # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._errors import ResultsError, choices
from ._study import StudyOutput

__all__ = ["RunResults", "write_run", "load_results", "package_versions"]

MANIFEST = "manifest.json"
_PACKAGES = ("tlprobes", "transformer-lens", "torch", "transformers", "numpy", "scipy",
             "scikit-learn", "pandas", "circuitsvis", "matplotlib")


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
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return save(clean)


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
        return StudyOutput(tables=self.tables, view_data=self.view_data, captures=self.captures,
                           facts=self.facts)

    def __repr__(self) -> str:
        return (f"RunResults({self.path}, study={self.manifest.get('suite', {}).get('study')!r}, "
                f"tables={list(self.tables)})")


def write_run(out_dir: str | Path, output: StudyOutput, manifest: dict[str, Any], *,
              save_captures: bool = False) -> dict[str, str]:
    """Write tables, facts and arrays, then the manifest with every file's hash. Returns the hashes."""
    out = Path(out_dir)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    for name, frame in output.tables.items():
        buf = io.StringIO()
        frame.to_csv(buf, index=False)
        files[f"tables/{name}.csv"] = buf.getvalue().encode("utf-8")
    files["facts.json"] = json.dumps(output.facts, indent=2, default=_json_default).encode("utf-8")
    files["view_data.safetensors"] = _safetensors_bytes(output.view_data)
    if save_captures and output.captures:
        files["captures.safetensors"] = _safetensors_bytes(output.captures)
    hashes = {}
    for rel, data in files.items():
        (out / rel).write_bytes(data)
        hashes[rel] = _sha256(data)
    manifest = {**manifest, "files": hashes}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_json_default), encoding="utf-8")
    return hashes


def _read_checked(root: Path, rel: str, want: str) -> bytes:
    path = root / rel
    if not path.is_file():
        raise ResultsError(f"{path} is missing; the manifest lists it (the run directory is incomplete)")
    data = path.read_bytes()
    if _sha256(data) != want:
        raise ResultsError(
            f"{path} does not match the hash in {root / MANIFEST}: the file was truncated or edited "
            "after the run; re-run the suite to regenerate it"
        )
    return data


def load_results(path: str | Path) -> RunResults:
    """Read a run directory back (tables as pandas DataFrames, arrays as tensors), checking hashes."""
    import pandas as pd
    from safetensors.torch import load

    root = Path(path)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ResultsError(f"{root} is not a tlprobes run directory: {MANIFEST} is missing")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ResultsError(f"{mpath} is not valid JSON ({err}); the manifest was truncated or edited") from None
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ResultsError(f"{mpath} has no 'files' table; not a tlprobes run manifest")
    tables: dict[str, Any] = {}
    facts: dict[str, Any] = {}
    arrays: dict[str, dict[str, torch.Tensor]] = {"view_data": {}, "captures": {}}
    for rel, digest in files.items():
        data = _read_checked(root, rel, digest)
        if rel.startswith("tables/") and rel.endswith(".csv"):
            tables[Path(rel).stem] = pd.read_csv(io.BytesIO(data))
        elif rel == "facts.json":
            facts = json.loads(data.decode("utf-8"))
        elif rel.endswith(".safetensors"):
            try:
                arrays[Path(rel).stem] = load(data)
            except Exception as err:  # safetensors raises its own error types
                raise ResultsError(f"{root / rel} is not a valid safetensors file: {err}") from None
        else:
            raise ResultsError(f"{mpath} lists an unexpected file {rel!r}; known kinds: "
                               f"{choices(['tables/*.csv', 'facts.json', '*.safetensors'])}")
    return RunResults(path=root, manifest=manifest, tables=tables, facts=facts,
                      view_data=arrays["view_data"], captures=arrays["captures"])
