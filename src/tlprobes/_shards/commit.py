"""Shard commits: written into a temporary folder, renamed into place when complete, hash-checked.

::

    OUT/shard-000003/
      state.safetensors   the shard's Result.state_dict() (tlprobes._state.save_state; no pickle)
      rows.parquet        one row per prompt, keyed by prompt index (only when pyarrow is installed)
      shard.json          range, attempt, host, pid, rank, device, timings, sha256 of every file

A commit is valid only if ``shard.json`` parses, names this run's fingerprint digest and shard range,
and every file it lists has the SHA-256 it records; anything else is redone, never merged.

    >>> from tlprobes._shards.commit import fingerprint_digest
    >>> fingerprint_digest({"batch_size": 4})[:7]
    'sha256:'
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from .._errors import ResultsError
from .plan import Shard

__all__ = [
    "write_commit", "read_commit", "load_commit", "start_attempt", "attempts", "is_running",
    "fingerprint_digest", "STATE", "ROWS", "META",
]

STATE = "state.safetensors"
ROWS = "rows.parquet"
META = "shard.json"
ATTEMPTS = ".attempts"


def fingerprint_digest(fp: dict[str, Any]) -> str:
    text = json.dumps(fp, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def _log(call_dir: Path, shard: Shard, event: str) -> None:
    folder = call_dir / ATTEMPTS
    folder.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"event": event, "host": socket.gethostname(), "pid": os.getpid(),
                       "rank": _rank(), "time": time.time()})
    with (folder / shard.name).open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def start_attempt(call_dir: Path, shard: Shard) -> int:
    """Record that this process starts ``shard``; returns the attempt number (1, 2, ...)."""
    _log(call_dir, shard, "start")
    return len(attempts(call_dir, shard))


def _events(call_dir: Path, shard: Shard) -> list[dict[str, Any]]:
    try:
        text = (call_dir / ATTEMPTS / shard.name).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut short by a crash
            continue
    return out


def attempts(call_dir: Path, shard: Shard) -> list[dict[str, Any]]:
    """Every recorded start of ``shard`` (oldest first)."""
    return [e for e in _events(call_dir, shard) if e.get("event") == "start"]


def is_running(call_dir: Path, shard: Shard) -> bool:
    """The last start of ``shard`` has neither committed nor (on this host) lost its process."""
    events = _events(call_dir, shard)
    if not events or events[-1].get("event") != "start":
        return False
    last = events[-1]
    if last.get("host") != socket.gethostname():
        return True  # another machine's worker: assume it is still at work
    try:
        os.kill(int(last["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError, TypeError):
        return False
    except PermissionError:  # pragma: no cover - alive, another user's
        return True
    return True


def _rows(result: Any, shard: Shard) -> Any:
    """Per-prompt rows of a shard as a pyarrow Table (prompt index, token count, prompt text)."""
    import pyarrow as pa

    mask = result.inputs.attention_mask
    n_tokens = mask.sum(dim=1).tolist()
    cols: dict[str, Any] = {
        "prompt_index": pa.array(range(shard.start, shard.stop), pa.int64()),
        "n_tokens": pa.array(n_tokens, pa.int64()),
    }
    if result.inputs.prompts is not None:
        cols["prompt"] = pa.array(result.inputs.prompts, pa.string())
    return pa.table(cols)


def write_commit(call_dir: Path, shard: Shard, result: Any, *, fingerprint: str, attempt: int,
                 device: str, timings: dict[str, float]) -> dict[str, Any]:
    """Commit ``result`` (a shard's :class:`~tlprobes.Result`) atomically; returns its shard.json."""
    from .._state import save_state

    t0 = time.perf_counter()
    tmp = call_dir / f".{shard.name}.tmp-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        save_state(tmp / STATE, result.state_dict())
        notes = []
        try:
            import pyarrow.parquet as pq
        except ImportError:
            notes.append("rows.parquet skipped: pyarrow is not installed")
        else:
            pq.write_table(_rows(result, shard), tmp / ROWS)
        files = {p.name: _sha256_file(p) for p in sorted(tmp.iterdir())}
        n_tokens = int(result.inputs.attention_mask.sum())
        meta = {
            "shard": shard.index, "range": [shard.start, shard.stop], "n_prompts": len(shard),
            "n_tokens": n_tokens, "attempt": attempt, "host": socket.gethostname(),
            "pid": os.getpid(), "rank": _rank(), "device": device, "fingerprint": fingerprint,
            "committed": time.time(),
            "timings_s": {**{k: round(v, 6) for k, v in timings.items()},
                          "commit": round(time.perf_counter() - t0, 6)},
            "files": files, "notes": notes,
        }
        with (tmp / META).open("w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        final = call_dir / shard.name
        if final.exists() and read_commit(call_dir, shard, fingerprint) is None:
            # a corrupt or foreign commit: move it aside (kept for inspection), never merged
            final.rename(call_dir / f".{shard.name}.bad-{secrets.token_hex(4)}")
        try:
            os.rename(tmp, final)
        except OSError:
            if read_commit(call_dir, shard, fingerprint) is None:  # pragma: no cover - racing writers
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another worker committed it first: keep theirs
        _fsync_dir(call_dir)
        _log(call_dir, shard, "commit")
        return meta
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_commit(call_dir: Path, shard: Shard, fingerprint: str | None) -> dict[str, Any] | None:
    """The commit's shard.json if it is valid for this run (hashes checked), else ``None``."""
    folder = call_dir / shard.name
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("range") != [shard.start, shard.stop]:
        return None
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        return None
    files = meta.get("files")
    if not isinstance(files, dict) or STATE not in files:
        return None
    for name, digest in files.items():
        if name not in (STATE, ROWS):
            return None
        path = folder / name
        if path.is_symlink() or not path.is_file() or _sha256_file(path) != digest:
            return None
    return meta


def load_commit(call_dir: Path, shard: Shard, fingerprint: str | None) -> Any:
    """The :class:`~tlprobes.Result` of a valid commit (:class:`ResultsError` if it is not valid)."""
    from .._result import Result
    from .._state import load_state

    if read_commit(call_dir, shard, fingerprint) is None:
        raise ResultsError(f"{call_dir / shard.name} is not a valid commit of this run (missing, "
                           "truncated, edited, or from another run); rerun with resume=True to redo it")
    return Result.from_state_dict(load_state(call_dir / shard.name / STATE))
