"""Run a suite end to end: load the model, compute the study, write the run directory and report.

::

    >>> run_suite("probes/rotation_angles.toml", out="runs/angles")   # doctest: +SKIP
    PosixPath('runs/angles/report.html')
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ._registry import get_study
from ._rundir import load_results, package_versions, write_run
from ._schema import Suite, find_suite, load_suite
from ._study import StudyContext

__all__ = ["run_suite", "render_run"]


def run_suite(
    suite: str | Path | Suite,
    *,
    out: str | Path | None = None,
    model: Any = None,
    second_model: Any = None,
    batch_size: int | None = None,
    device: str | None = None,
    save_arrays: bool = False,
    quiet: bool = False,
) -> Path:
    """Run ``suite`` and write its run directory; returns the path of ``report.html``.

    ``model`` (and ``second_model``) may be names or local directories (loaded with
    :func:`tlprobes.load_model`) or TL models already in memory; by default the suite's.
    """
    t0 = time.perf_counter()
    if not isinstance(suite, Suite):
        suite = load_suite(find_suite(suite))
    study = get_study(suite.study)
    out_dir = Path(out) if out is not None else Path("runs") / suite.name
    out_dir.mkdir(parents=True, exist_ok=True)
    device = device or suite.run["device"]
    torch.manual_seed(suite.run["seed"])

    def say(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    def load(spec: Any) -> Any:
        if spec is None or isinstance(spec, (str, Path)):
            from ..models import load_model

            return load_model(str(spec), device=device, compat=suite.model["compat"])
        return spec

    model = model if model is not None else suite.model["name"]
    model_name = model if isinstance(model, (str, Path)) else getattr(model.cfg, "model_name", "model")
    say(f"tlprobes: suite {suite.name!r} (study {suite.study}) on model {str(model_name)!r}")
    t_load = time.perf_counter()
    tl_model = load(model)
    second = second_model if second_model is not None else (suite.model["second"] or None)
    second = load(second) if second is not None else None
    t_load = time.perf_counter() - t_load
    ctx = StudyContext(
        model=tl_model,
        prompts=suite.prompts,
        columns=suite.columns,
        target=suite.target,
        analysis=suite.analysis,
        batch_size=batch_size or suite.run["batch_size"],
        padding_side=suite.run["padding_side"],
        seed=suite.run["seed"],
        device=device,
        progress=not quiet,
        second_model=second,
    )
    t_compute = time.perf_counter()
    output = study.compute(ctx)
    t_compute = time.perf_counter() - t_compute
    from .._adapter import adapter_for

    meta = adapter_for(tl_model).meta.to_dict()
    manifest: dict[str, Any] = {
        "tlprobes_run": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "suite": suite.to_dict(),
        "model": {**meta, "requested": str(model_name)},
        "second_model": adapter_for(second).meta.to_dict() if second is not None else None,
        "mode": meta["mode"],
        "tl_version": meta["tl_version"],
        "packages": package_versions(),
        "seed": suite.run["seed"],
        "device": device,
        "batch_size": ctx.batch_size,
        "timings_s": {"load_model": round(t_load, 3), "compute": round(t_compute, 3)},
    }
    write_run(out_dir, output, manifest, save_captures=save_arrays)
    report_path = render_run(out_dir)
    say(f"tlprobes: wrote {out_dir}/ (tables, manifest.json{', captures' if save_arrays else ''})")
    say(f"tlprobes: report at {report_path.resolve()}  ({time.perf_counter() - t0:.1f} s)")
    return report_path


def render_run(run_dir: str | Path) -> Path:
    """(Re)build ``report.html`` of a run directory from its saved tables and arrays, no model."""
    results = load_results(run_dir)
    study = get_study(results.manifest["suite"]["study"])
    report = study.render(results.output(), results.manifest)
    path = Path(run_dir) / "report.html"
    report.save_html(path)
    return path
