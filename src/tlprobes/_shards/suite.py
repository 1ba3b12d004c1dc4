"""Sharded suite runs: the work folder beside the run directory, and ``tlprobes merge`` of a suite.

::

    runs/angles/           the run directory (written once, by rank 0, after the merge)
    runs/angles.shards/    suite.json (the request, for `tlprobes merge`) and call-000/, call-001/ ...

    >>> from tlprobes._shards.suite import work_dir_for
    >>> work_dir_for("runs/angles").name
    'angles.shards'
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .._errors import InputError, ResultsError
from .context import Sharding
from .engines import get_engine
from .merge import SUITE_JSON

__all__ = ["open_sharding", "rerun_suite", "work_dir_for", "default_engine", "MergeOnlyEngine"]


def work_dir_for(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".shards")


def default_engine() -> str:
    """``torchrun`` when this process was started by torchrun (or SLURM via it), else ``local``."""
    return "torchrun" if "TORCHELASTIC_RUN_ID" in os.environ or (
        "WORLD_SIZE" in os.environ and "RANK" in os.environ) else "local"


def open_sharding(out_dir: Path, *, suite: Any, engine: Any, shard_size: int | None,
                  resume: bool, engine_options: dict[str, Any] | None = None, model: Any = None,
                  second: Any = None, batch_size: int | None = None, device: str = "cpu",
                  save_arrays: bool = False, overwrite: bool = False) -> Sharding | None:
    """The sharding of a suite run, or ``None`` when nothing asks for it (today's behaviour)."""
    if engine is None and shard_size is None and not resume and default_engine() == "local":
        return None
    named = isinstance(model, (str, Path))
    request = {
        "model": str(model) if named else None,
        "second_model": str(second) if isinstance(second, (str, Path)) else None,
        "batch_size": batch_size, "device": device, "shard_size": shard_size,
        "save_arrays": save_arrays,
        "model_spec": {"name": str(model), "device": device, "compat": suite.model["compat"]}
        if named else None,
    }
    eng = get_engine(engine if engine is not None else default_engine(), **(engine_options or {}))
    work = work_dir_for(out_dir)
    fp_suite = {k: v for k, v in suite.to_dict().items() if k not in ("path", "prompts_file")}

    def prepare() -> None:
        path = work / SUITE_JSON
        if path.exists() and overwrite and not resume:
            shutil.rmtree(work)  # --overwrite replaces the whole old run, its shards too
        if path.exists() and not resume:
            raise InputError(f"{str(work)!r} holds the shards of an earlier run of this suite; pass "
                             "--resume to continue it (only missing shards are computed), or "
                             "delete that folder to start over")
        work.mkdir(parents=True, exist_ok=True)
        tmp = work / f".{SUITE_JSON}.{os.getpid()}"
        tmp.write_text(json.dumps({**request, "out": str(out_dir), "suite_path": str(suite.path)},
                                  indent=1, sort_keys=True, default=str), encoding="utf-8")
        os.replace(tmp, path)

    eng.on_main(prepare)
    return Sharding(work_dir=work, engine=eng, resume=resume, shard_size=shard_size,
                    suite=fp_suite, model_spec=request.get("model_spec"))


def local_device(device: str, sharding: Sharding | None) -> str:
    """Under torchrun a bare ``cuda`` means this rank's GPU (``cuda:LOCAL_RANK``, modulo the GPU count)."""
    if sharding is not None and device == "cuda" and "LOCAL_RANK" in os.environ:
        import torch

        n = max(torch.cuda.device_count(), 1)
        return f"cuda:{int(os.environ['LOCAL_RANK']) % n}"  # ranks share GPUs when there are fewer
    return device


class MergeOnlyEngine:
    """An engine that computes nothing: every shard must already be committed."""

    name = "merge"

    def info(self) -> dict[str, Any]:
        from .. import __version__

        return {"engine": "merge", "version": __version__, "world_size": 1, "rank": 0,
                "replicas": 0, "device_maps": None}

    @property
    def is_main(self) -> bool:
        return True

    def on_main(self, fn: Any) -> Any:
        return fn()

    def execute(self, job: Any) -> None:
        missing = job.pending()
        if missing:
            raise ResultsError(f"{str(job.out)!r}: shards {missing} of {len(job.plan)} have no "
                               "valid commit; `tlprobes run ... --resume` computes them")


def rerun_suite(suite_json: Path, *, require_complete: bool = True) -> Any:
    """Write the run directory of a sharded suite run from its commits (``tlprobes merge``)."""
    from ..suites import load_suite, run_suite

    try:
        req = json.loads(Path(suite_json).read_text(encoding="utf-8"))
        suite_path, out = req["suite_path"], req["out"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ResultsError(f"{str(suite_json)!r} is unreadable ({type(err).__name__}: {err})") from None
    if req.get("model") is None and req.get("model_spec") is None:
        raise InputError(f"{str(suite_json)!r}: the run used a model object, not a name or folder; "
                         "merge it by calling run_suite(..., model=<the model>, resume=True)")
    return run_suite(load_suite(suite_path), out=out, model=req.get("model"),
                     second_model=req.get("second_model"), batch_size=req.get("batch_size"),
                     device=req.get("device"), save_arrays=bool(req.get("save_arrays")),
                     quiet=True, overwrite=True, shard_size=req.get("shard_size"),
                     engine=MergeOnlyEngine() if require_complete else "local", resume=True)
