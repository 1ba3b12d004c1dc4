"""Fold committed shards in shard order, describe a call for the manifest, report status.

::

    >>> from tlprobes._shards.merge import PRECISION
    >>> PRECISION.split(";")[0]
    'counts exact'
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .._errors import InputError, ResultsError
from .commit import STATE, attempts, is_running, read_commit
from .plan import Plan

__all__ = ["PRECISION", "RUN_JSON", "merge_call", "describe_call", "status", "merge_run",
           "read_call", "call_dirs"]

PRECISION = ("counts exact; float sums equal to the single-process run within 1e-12 relative "
             "(the same batches, folded in shard order)")
RUN_JSON = "run.json"
SUITE_JSON = "suite.json"


def read_call(call_dir: Path) -> tuple[Plan, dict[str, Any], str]:
    """The plan, fingerprint and its digest recorded in ``call_dir/run.json``."""
    try:
        data = json.loads((Path(call_dir) / RUN_JSON).read_text(encoding="utf-8"))
        plan = Plan(**{k: data["plan"][k] for k in ("n_prompts", "shard_size", "batch_size")})
        return plan, data["fingerprint"], data["digest"]
    except FileNotFoundError:
        raise ResultsError(f"{str(call_dir)!r} holds no sharded run ({RUN_JSON} is missing)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ResultsError(f"{str(call_dir)!r}: {RUN_JSON} is unreadable ({type(err).__name__}: "
                           f"{err})") from None


def merge_call(call_dir: Path, plan: Plan, digest: str) -> Any:
    """Every shard's :class:`~tlprobes.Result`, merged in shard order (all must be committed).

    Adjacent results are merged pairwise (a balanced tree that keeps shard order), so dense
    captures are copied O(log k) times rather than k times; ``merge`` is associative.
    """
    from .._result import Result
    from .._state import load_state

    missing = [s.index for s in plan.shards if read_commit(call_dir, s, digest) is None]
    if missing:
        raise ResultsError(f"{str(call_dir)!r}: shards {missing} of {len(plan)} have no valid "
                           "commit; rerun with resume=True (--resume) to compute them")
    parts = [Result.from_state_dict(load_state(call_dir / s.name / STATE)) for s in plan.shards]
    while len(parts) > 1:
        paired = [parts[i].merge(parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        parts = paired + ([parts[-1]] if len(parts) % 2 else [])
    return parts[0]


def describe_call(call_dir: Path, plan: Plan, digest: str, engine: dict[str, Any]) -> dict[str, Any]:
    """The manifest record of one sharded call: plan, assignment, per-shard facts, merge order."""
    shards = []
    for s in plan.shards:
        meta = read_commit(call_dir, s, digest) or {}
        shards.append({
            "shard": s.index, "range": [s.start, s.stop], "n_tokens": meta.get("n_tokens"),
            "attempt": meta.get("attempt"), "attempts": len(attempts(call_dir, s)),
            "host": meta.get("host"), "rank": meta.get("rank"), "device": meta.get("device"),
            "committed": meta.get("committed"), "timings_s": meta.get("timings_s"),
            "files": meta.get("files"),
        })
    return {
        "dir": str(call_dir), "fingerprint": digest, "engine": engine.get("engine"),
        "world_size": engine.get("world_size"), "shard_size": plan.shard_size,
        "batch_size": plan.batch_size, "n_prompts": plan.n_prompts, "n_shards": len(plan),
        "assignment": {str(s["shard"]): s["rank"] for s in shards},
        "n_tokens": sum(s["n_tokens"] or 0 for s in shards),
        "shards": shards, "merge_order": [s.index for s in plan.shards], "precision": PRECISION,
    }


def call_dirs(path: Path) -> list[Path]:
    """The call directories of ``path``: itself (a ``tp.run(out=...)`` folder) or its ``call-NNN``."""
    path = Path(path)
    if (path / RUN_JSON).is_file():
        return [path]
    calls = sorted(p for p in path.glob("call-[0-9][0-9][0-9]") if p.is_dir())
    if calls:
        return calls
    sibling = Path(str(path).rstrip("/") + ".shards")
    if not path.name.endswith(".shards") and sibling.is_dir():
        return call_dirs(sibling)
    raise InputError(f"{str(path)!r} is not a sharded run: no {RUN_JSON} and no call-NNN folders "
                     "(give the out= folder of tp.run, or a suite's run folder or its .shards folder)")


def status(path: str | Path) -> dict[str, Any]:
    """Per call: shards ``done`` (valid commit), ``running`` (started, no commit) and ``missing``."""
    out: dict[str, Any] = {}
    now = time.time()
    for call in call_dirs(Path(path)):
        plan, _, digest = read_call(call)
        done, running, missing = [], [], []
        for s in plan.shards:
            if read_commit(call, s, digest) is not None:
                done.append(s.index)
            elif is_running(call, s):
                running.append(s.index)
            else:
                missing.append(s.index)
        out[call.name] = {"dir": str(call), "n_shards": len(plan), "done": done,
                          "running": running, "missing": missing, "checked": now}
    return out


def merge_run(path: str | Path) -> Any:
    """Merge a finished sharded run without computing anything new.

    A ``tp.run(out=...)`` folder: returns the merged :class:`~tlprobes.Result` and saves its state to
    ``merged.safetensors``. A suite's work folder (``RUN.shards``): reruns the suite recorded in
    ``suite.json`` with ``resume=True`` (the model is loaded for the study's analysis; no shard is
    recomputed: a missing one is refused) and returns the path of ``report.html``.
    """
    path = Path(path)
    calls = call_dirs(path)
    suite_json = calls[0].parent / SUITE_JSON
    if calls == [path] or not suite_json.is_file():
        if len(calls) != 1:
            raise InputError(f"{str(path)!r} holds {len(calls)} calls but no {SUITE_JSON}; merge "
                             "each call folder on its own")
        from .._state import save_state

        plan, _, digest = read_call(calls[0])
        result = merge_call(calls[0], plan, digest)
        save_state(calls[0] / "merged.safetensors", result.state_dict())
        return result
    from .suite import rerun_suite

    return rerun_suite(suite_json, require_complete=True)
