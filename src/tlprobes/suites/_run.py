"""Run a suite end to end: load the model, compute the study, write the run directory and report.

::

    >>> run_suite("probes/rotation_angles.toml", out="runs/angles")   # doctest: +SKIP
    PosixPath('runs/angles/report.html')

Everything that can be checked without the model is checked first (the suite and its prompt files,
the device, the batch size, the output folder, a local model directory's ``config.json``), so a typo
fails in a second, not after the model has loaded. The run is written into a temporary sibling folder
and renamed into place when complete (see :mod:`tlprobes.suites._rundir`).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._errors import InputError, ModelError, choices
from ._registry import get_study
from ._rundir import (
    check_out_dir,
    load_results,
    package_versions,
    run_directory,
    safe_name,
    write_file_atomic,
    write_run,
)
from ._schema import Suite, find_suite, load_suite
from ._study import StudyContext

__all__ = ["run_suite", "render_run", "check_device", "check_model_spec"]

_DEVICES = ("cpu", "cuda", "cuda:N", "mps")


def check_device(device: Any) -> str:
    """A device string torch understands and this machine has; else :class:`InputError`."""
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not device:
        raise InputError(f"device {device!r} is not a device name; valid: {choices(_DEVICES)}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {device!r}; valid: {choices(_DEVICES)}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asks for CUDA, but no CUDA GPU is available here; "
                             "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise InputError(f"device {device!r} asks for Apple MPS, which is not available here; "
                             "use --device cpu")
    elif dev.type != "cpu":
        raise InputError(f"unsupported device {device!r}; valid: {choices(_DEVICES)}")
    return device


def check_model_spec(spec: Any, what: str = "model") -> None:
    """A local model folder must hold a readable, valid ``config.json`` (checked before loading)."""
    if spec is None or not isinstance(spec, (str, Path)):
        return
    from ..models._load import SHIPPED_MODELS

    if str(spec) in SHIPPED_MODELS and not isinstance(spec, Path):
        return  # shipped names win over folders of the same name, as in load_model
    path = Path(spec).expanduser()
    if not path.exists():
        if isinstance(spec, Path):
            raise ModelError(f"{what} folder {str(spec)!r} does not exist")
        return  # a shipped or TransformerLens name: load_model checks it
    if path.is_file() and path.suffix.lower() == ".gguf":
        try:
            with path.open("rb") as f:
                magic = f.read(4)
        except OSError as err:
            raise ModelError(f"{what} file {str(spec)!r} is unreadable ({err})") from None
        if magic != b"GGUF":
            raise ModelError(f"{what} file {str(spec)!r} is not a GGUF file (it does not start "
                             "with the GGUF magic bytes)")
        return
    if not path.is_dir():
        raise ModelError(f"{what} {str(spec)!r} is a file; give a Hugging Face model folder "
                         "(config.json, weights, tokenizer files), a .gguf file or a model name")
    cfg = path / "config.json"
    try:
        json.loads(cfg.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{what} folder {str(spec)!r} has no config.json; a local model needs "
                         "the Hugging Face layout (config.json, weights, tokenizer files)") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ModelError(f"{what} folder {str(spec)!r}: config.json is unreadable or not valid "
                         f"JSON ({type(err).__name__}: {err})") from None


def _check_batch_size(batch_size: Any) -> None:
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size {batch_size!r} is not valid; give a positive integer (1, 8, 16 ...)")


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
    overwrite: bool = False,
    engine: Any = None,
    shard_size: int | None = None,
    resume: bool = False,
    engine_options: dict[str, Any] | None = None,
) -> Path | None:
    """Run ``suite`` and write its run directory; returns the path of ``report.html``.

    ``model`` (and ``second_model``) may be names or local directories (loaded with
    :func:`tlprobes.load_model`) or TL models already in memory; by default the suite's.
    ``out`` defaults to ``runs/<suite name>`` (the name made safe for a folder). An existing,
    non-empty ``out`` is refused unless ``overwrite=True``, which replaces the whole old run.
    ``engine``, ``shard_size``, ``resume``: shard every ``tp.run`` of the study, committing under
    ``<out>.shards/`` (see :mod:`tlprobes._shards`); under torchrun only rank 0 writes ``out`` and
    the other ranks return ``None``.
    """
    t0 = time.perf_counter()
    if not isinstance(suite, Suite):
        suite = load_suite(find_suite(suite))
    study = get_study(suite.study)
    _check_batch_size(batch_size)
    device = check_device(device or suite.run["device"])
    out_dir = Path(out) if out is not None else Path("runs") / safe_name(suite.name)
    check_out_dir(out_dir, overwrite=overwrite)
    model = model if model is not None else suite.model["name"]
    second = second_model if second_model is not None else (suite.model["second"] or None)
    check_model_spec(model)
    check_model_spec(second, "second model")
    from .._shards.context import sharding as shard_context
    from .._shards.suite import local_device, open_sharding

    sharding = open_sharding(out_dir, suite=suite, engine=engine, shard_size=shard_size,
                             resume=resume, engine_options=engine_options, model=model,
                             second=second, batch_size=batch_size, device=device,
                             save_arrays=save_arrays, overwrite=overwrite)
    device = local_device(device, sharding)
    quiet = quiet or (sharding is not None and not sharding.is_main)

    def say(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    def load(spec: Any) -> Any:
        if spec is None or isinstance(spec, (str, Path)):
            from ..models import load_model

            return load_model(str(spec), device=device, compat=suite.model["compat"])
        return spec

    import torch

    torch.manual_seed(suite.run["seed"])
    model_name = model if isinstance(model, (str, Path)) else getattr(model.cfg, "model_name", "model")
    say(f"tlprobes: suite {suite.name!r} (study {suite.study}) on model {str(model_name)!r}")
    t_load = time.perf_counter()
    say("tlprobes: loading model ...")
    tl_model = load(model)
    second = load(second) if second is not None else None
    t_load = time.perf_counter() - t_load
    say(f"tlprobes: model loaded ({t_load:.1f} s)")
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
    say(f"tlprobes: capturing and analysing {len(suite.prompts)} prompts ...")
    t_compute = time.perf_counter()
    with shard_context(sharding):
        output = study.compute(ctx)
    t_compute = time.perf_counter() - t_compute
    say(f"tlprobes: computed ({t_compute:.1f} s)")
    from .._adapter import adapter_for

    meta = adapter_for(tl_model).meta.to_dict()
    manifest: dict[str, Any] = {
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
    if sharding is not None:
        manifest["shards"] = sharding.manifest()
        if not sharding.is_main:
            return None  # rank 0 writes the run directory
    say("tlprobes: rendering the report ...")
    t_render = time.perf_counter()
    with run_directory(out_dir, overwrite=overwrite) as tmp:
        write_run(tmp, output, manifest, save_captures=save_arrays)
        _render_into(tmp)
    report_path = out_dir / "report.html"
    say(f"tlprobes: rendered ({time.perf_counter() - t_render:.1f} s)")
    say(f"tlprobes: wrote {out_dir}/ (tables, manifest.json{', captures' if save_arrays else ''})")
    say(f"tlprobes: report at {report_path.resolve()}  ({time.perf_counter() - t0:.1f} s)")
    return report_path


def _render_into(run_dir: Path) -> Path:
    results = load_results(run_dir)
    study = get_study(results.manifest["suite"]["study"])
    report = study.render(results.output(), results.manifest)
    return write_file_atomic(run_dir, "report.html", report.to_html().encode("utf-8"))


def render_run(run_dir: str | Path) -> Path:
    """(Re)build ``report.html`` of a run directory from its saved tables and arrays, no model.

    The hashes and the manifest digest are checked first; the report is written to a temporary file
    renamed onto ``report.html``, so a ``report.html`` that is a symlink is replaced, never followed.
    """
    return _render_into(Path(run_dir))
