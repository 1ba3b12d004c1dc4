"""What tlprobes costs next to a bare forward pass, TransformerLens' cache and nnsight, in one run.

    python bench/run.py                      # GPT-2-small shape, batch 2 x 64 tokens, CPU
    python bench/run.py --size overhead --no-analyzers   # 12 x 64: hook overhead, as on a GPU
    python bench/run.py --size xl            # GPT-2-XL shape (48 x 1600), batch 1 x 64 tokens
    python bench/run.py --device cuda        # on a GPU (torch.cuda peak memory)
    python bench/run.py --size tiny --analyzer-scale 0.05   # a smoke test in under a minute

Time: every method runs in one process on the same model and tokens, round-robin (the order
rotates each round), after warm-up rounds; each method's time is the median over rounds, its ratio
the median over rounds of t / t_bare from the same round. Memory: each method runs in its own fresh
subprocess (same seed, same weights), see ``_measure.py`` for exactly what is compared. Writes
``bench/results/<size>-<device>-<timestamp>.json`` and ``bench/results/latest-<size>-<device>.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
if (ROOT / "src" / "tlprobes").is_dir():
    sys.path.insert(1, str(ROOT / "src"))

from _models import SIZES  # noqa: E402

# fixed glibc malloc thresholds in every process: big buffers are mmapped and handed back at free,
# so RSS follows what is really alive (the default dynamic threshold keeps freed heaps around)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _missing() -> dict[str, str]:
    import importlib.util

    need = {
        "torch": "pip install torch",
        "transformers": "pip install transformers",
        "transformer_lens": "pip install 'transformer-lens>=4.3' (the TransformerBridge)",
        "jaxtyping": "pip install jaxtyping (a tlprobes dependency)",
        "tlprobes": "pip install -e . from the repository root (or run from a checkout with src/)",
    }
    return {m: how for m, how in need.items() if importlib.util.find_spec(m) is None}


def _optional(name: str) -> str | None:
    try:
        mod = __import__(name)
        return str(getattr(mod, "__version__", "?"))
    except Exception as err:  # noqa: BLE001 - any import failure means "skip it"
        return f"unavailable: {type(err).__name__}: {err}"[:200]


def _versions() -> dict[str, Any]:
    import importlib.metadata as md

    out: dict[str, Any] = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "transformer-lens", "nnsight", "rsatoolbox", "scipy",
                "scikit-learn", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _machine(device: str, threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                            "torch_threads": threads}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["mem_total_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    if device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ----------------------------------------------------------------------------- workers
def worker(args: argparse.Namespace) -> None:
    """Fresh process: build the model, warm the method up once, then measure its peak memory."""
    import torch

    torch.set_num_threads(args.threads)
    from _measure import floor_cpu, floor_cuda, measure_cpu, measure_cuda
    from _methods import make, needs
    from _models import build

    need_bridge, need_nn = needs(args.worker)
    s = build(args.size, args.batch, args.seq, args.device, bridge=need_bridge)
    nn_model = None
    if need_nn:
        from nnsight import NNsight

        nn_model = NNsight(s.hf)
    call = make(args.worker, s, nn_model)
    cuda = args.device.startswith("cuda")
    floor = floor_cuda() if cuda else floor_cpu()  # the model loaded, no forward pass yet
    kept = call()  # warm-up (lazy initialisation, first-call allocations)
    del kept
    measure = measure_cuda if cuda else measure_cpu
    call_times: list[float] = []

    def timed() -> Any:  # the memory call's own time (one process, not interleaved: a rough check)
        t0 = time.perf_counter()
        kept = call()
        if cuda:
            torch.cuda.synchronize()
        call_times.append(time.perf_counter() - t0)
        return kept

    runs = [measure(timed, floor) for _ in range(args.mem_repeats)]
    out = {k: statistics.median(r[k] for r in runs) for k in ("peak", "retained", "total")}
    out["call_time_s"] = statistics.median(call_times)
    out["how"] = runs[0]["how"]
    out["all_peaks"] = [r["peak"] for r in runs]
    print("RESULT " + json.dumps(out), flush=True)


def memory_of(method: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--size", args.size,
           "--batch", str(args.batch), "--seq", str(args.seq), "--device", args.device,
           "--threads", str(args.threads), "--mem-repeats", str(args.mem_repeats)]
    env = {**os.environ, **MALLOC_ENV}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.worker_timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr or proc.stdout)[-800:]}


# ----------------------------------------------------------------------------- timing
def time_methods(methods: list[str], args: argparse.Namespace, log: Any) -> dict[str, list[float]]:
    import torch
    from _methods import make
    from _models import build

    s = build(args.size, args.batch, args.seq, args.device, bridge=True)
    nn_model = None
    if any(m.startswith("nnsight") for m in methods):
        from nnsight import NNsight

        nn_model = NNsight(s.hf)
    with torch.no_grad():  # the bridge and HF compute the same thing (shared weights)
        diff = (s.bridge(s.tokens) - s.hf(s.tokens).logits).abs().max().item()
    log(f"bridge vs HF logits: max |diff| = {diff:.2e}")
    calls = {m: make(m, s, nn_model) for m in methods}
    cuda = args.device.startswith("cuda")
    times: dict[str, list[float]] = {m: [] for m in methods}
    rounds = args.warmup + args.repeats
    for r in range(rounds):
        k = r % len(methods)
        order = methods[k:] + methods[:k]
        t_round = time.perf_counter()
        for m in order:
            gc.collect()
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = calls[m]()
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            del out
            if r >= args.warmup:
                times[m].append(dt)
        log(f"round {r + 1}/{rounds} ({'warm-up' if r < args.warmup else 'timed'}) "
            f"{time.perf_counter() - t_round:.1f}s")
    return times


# ----------------------------------------------------------------------------- table
def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:,.1f} MiB"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


TARGETS = {
    # method: (what it is compared with, max time ratio, max memory ratio[, memory measure])
    # runs that need no pattern run on SDPA, so their floor is the bare pass on SDPA when measured
    "tp_positions": ("bare_sdpa|bare", 1.05, 1.05),
    "tp_steps": ("bare_sdpa|bare", 1.05, 1.05),
    "tp_steps_her": ("bare_sdpa|bare", 1.05, 1.05),
    "tp_resid": ("bare_sdpa", 1.05, 1.05),
    "tp_resid_eager": ("rwc_resid", 1.05, 1.05),
    "tp_steps_eager": ("bare", 1.05, 1.05),
    "tp_sites": ("rwc_sites", 1.0, 1.0, "total"),
    "tp_full": ("rwc_sites_lens", 1.0, 1.0, "total"),
    "tp_attention": ("rwc_pattern", 1.05, 1.05, "total"),
    "tp_attention_stacked": ("rwc_pattern_stacked", 1.05, 1.05, "total"),
    "tp_attention_her": ("bare", 1.05, 1.05, "total"),
}
NNSIGHT_PAIRS = (("tp_sites", "nnsight_sites"), ("tp_full", "nnsight_sites_lens"),
                 ("tp_attention", "nnsight_pattern"), ("tp_resid", "nnsight_resid_sdpa"))


def build_rows(methods: list[str], times: dict[str, list[float]], mem: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    from _methods import DESCRIPTIONS

    rows = []
    bare_t = times.get("bare")
    bare_m = mem.get("bare", {}).get("peak")
    for m in methods:
        t = times.get(m)
        row: dict[str, Any] = {"method": m, "what": DESCRIPTIONS[m]}
        if t:
            row["time_s"] = statistics.median(t)
            row["time_min_s"] = min(t)
            row["times_s"] = t
            if bare_t:
                row["time_x_bare"] = statistics.median(a / b for a, b in zip(t, bare_t))
        mm = mem.get(m, {})
        row.update({f"mem_{k}": v for k, v in mm.items()})
        if mm.get("peak") is not None and bare_m:
            row["mem_x_bare"] = mm["peak"] / bare_m
        rows.append(row)
    present = {r["method"] for r in rows}
    by = {r["method"]: r for r in rows}
    for r in rows:  # targets
        if r["method"] in TARGETS and r["method"] in by:
            refs, tmax, mmax, *key = TARGETS[r["method"]]
            ref = next((x for x in refs.split("|") if x in present), None)
            if ref is None:
                continue
            mkey = "mem_" + (key[0] if key else "peak")
            rr = by[ref]
            tr = (statistics.median(a / b for a, b in zip(r["times_s"], rr["times_s"]))
                  if r.get("times_s") and rr.get("times_s") else None)
            mr = (r[mkey] / rr[mkey]) if r.get(mkey) and rr.get(mkey) else None
            r["target"] = {"vs": ref, "mem_measure": mkey, "time_ratio": tr, "time_max": tmax, "mem_ratio": mr,
                           "mem_max": mmax,
                           "time_ok": None if tr is None else tr <= tmax,
                           "mem_ok": None if mr is None else mr <= mmax}
    for tp_m, nn_m in NNSIGHT_PAIRS:
        if tp_m in by and nn_m in by and by[nn_m].get("times_s") and by[tp_m].get("times_s"):
            tr = statistics.median(a / b for a, b in zip(by[tp_m]["times_s"], by[nn_m]["times_s"]))
            entry = {"time_ratio": tr, "faster": tr < 1.0}
            if by[tp_m].get("mem_total") and by[nn_m].get("mem_total"):
                entry["mem_total_ratio"] = by[tp_m]["mem_total"] / by[nn_m]["mem_total"]
            by[tp_m].setdefault("vs_nnsight", {})[nn_m] = entry
    return rows


def render(rows: list[dict[str, Any]], analyzer_rows: list[dict[str, Any]], cfg: dict[str, Any]) -> str:
    lines = [
        f"model: {cfg['size']} ({cfg['n_layer']} layers, d_model {cfg['d_model']}, vocab {cfg['vocab']}), "
        f"batch {cfg['batch']} x seq {cfg['seq']}, device {cfg['device']}, torch threads {cfg['threads']}, "
        f"{cfg['warmup']} warm-up + {cfg['repeats']} timed rounds, memory: {cfg['mem_how']}",
        "",
        "| method | time (median) | time / bare | peak mem above baseline | mem / bare | kept after call "
        "| peak above loaded model | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        tgt = r.get("target")
        if tgt:
            def ok(v: Any) -> str:
                return "?" if v is None else ("met" if v else "MISSED")
            tx = "-" if tgt["time_ratio"] is None else f"{tgt['time_ratio']:.2f}"
            mx = "-" if tgt["mem_ratio"] is None else f"{tgt['mem_ratio']:.2f}"
            mname = "mem" if tgt["mem_measure"] == "mem_peak" else "mem (above loaded model)"
            t = (f"vs {tgt['vs']}: time {tx}x (<= {tgt['time_max']}) {ok(tgt['time_ok'])}, "
                 f"{mname} {mx}x (<= {tgt['mem_max']}) {ok(tgt['mem_ok'])}")
        else:
            t = ""
        for nn, v in r.get("vs_nnsight", {}).items():
            t += f"; vs {nn}: time {v['time_ratio']:.2f}x"
            if "mem_total_ratio" in v:
                t += f", mem (above loaded model) {v['mem_total_ratio']:.2f}x"
        err = r.get("mem_error")
        lines.append(
            f"| {r['what']} | {r.get('time_s', float('nan')):.3f} s | {_x(r.get('time_x_bare'))} | "
            f"{_fmt_bytes(r.get('mem_peak')) if not err else 'error'} | {_x(r.get('mem_x_bare'))} | "
            f"{_fmt_bytes(r.get('mem_retained'))} | {_fmt_bytes(r.get('mem_total'))} | {t} |"
        )
    if analyzer_rows:
        lines += ["", "| analyzer | what | time (median) | / library |", "|---|---|---:|---:|"]
        for r in analyzer_rows:
            if "time_s" not in r:
                lines.append(f"| {r['method']} | {r['what']} | - | - |")
                continue
            lines.append(f"| {r['method']} | {r['what']} | {r['time_s']:.3f} s | "
                         f"{r['ratio_to_library']:.2f}x (vs {r['reference']}) |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=list(SIZES), default="small",
                   help="small: 12 layers x 768 (GPT-2 small); xl: 48 x 1600 (GPT-2 XL); overhead: 12 x 64, "
                        "per-op overhead dominates (a CPU stand-in for a launch-bound GPU); tiny: smoke test")
    p.add_argument("--batch", type=int, help="prompts per forward pass (default by size)")
    p.add_argument("--seq", type=int, help="tokens per prompt (default by size)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: min(4, cores))")
    p.add_argument("--warmup", type=int, default=1, help="warm-up rounds (not timed)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds")
    p.add_argument("--mem-repeats", type=int, default=1, help="measured calls per memory subprocess")
    p.add_argument("--methods", default="default",
                   help="comma-separated methods or groups (default, attention, sdpa)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-method memory subprocesses")
    p.add_argument("--no-analyzers", action="store_true", help="skip Procrustes / t-SNE / RSA")
    p.add_argument("--analyzers-only", action="store_true")
    p.add_argument("--analyzer-scale", type=float, default=1.0,
                   help="scale the analyzer sizes (1.0: 50k Procrustes pairs, 5k t-SNE points, 1k RSA items)")
    p.add_argument("--analyzer-repeats", type=int, default=3)
    p.add_argument("--worker-timeout", type=int, default=1800)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()

    size = SIZES[args.size]
    args.batch = args.batch or size["batch"]
    args.seq = args.seq or size["seq"]
    if args.threads is None:
        args.threads = min(4, os.cpu_count() or 1)

    missing = _missing()
    if missing:
        msg = "\n".join(f"  {m}: {how}" for m, how in missing.items())
        sys.exit(f"bench/run.py: missing dependencies:\n{msg}")
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench/run.py: --device cuda but torch.cuda.is_available() is False")
    if args.worker:
        worker(args)
        return
    for k, v in MALLOC_ENV.items():  # the timing process should allocate like the workers
        if os.environ.get(k) != v:
            os.environ.update(MALLOC_ENV)
            os.execv(sys.executable, [sys.executable, *sys.argv])
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    from _methods import DESCRIPTIONS, GROUPS

    methods = []
    for m in (m.strip() for m in args.methods.split(",") if m.strip()):
        for x in GROUPS.get(m, [m]):
            if x not in methods:
                methods.append(x)
    bad = [m for m in methods if m not in DESCRIPTIONS]
    if bad:
        sys.exit(f"unknown methods {bad}; valid: {', '.join(DESCRIPTIONS)}")
    nn_version = _optional("nnsight") if any(m.startswith("nnsight") for m in methods) else None
    if nn_version and nn_version.startswith("unavailable"):
        log(f"nnsight {nn_version}; its rows are skipped (pip install nnsight)")
        methods = [m for m in methods if not m.startswith("nnsight")]
    if "bare" not in methods:
        methods.insert(0, "bare")
    if args.analyzers_only:
        methods = []

    cfg = {"size": args.size, "n_layer": size["n_layer"], "d_model": size["n_embd"], "vocab": size["vocab"],
           "batch": args.batch, "seq": args.seq, "device": args.device, "threads": args.threads,
           "warmup": args.warmup, "repeats": args.repeats, "mem_repeats": args.mem_repeats,
           "malloc_env": MALLOC_ENV, "mem_how": "-"}
    t_start = time.time()
    times: dict[str, list[float]] = {}
    mem: dict[str, dict[str, Any]] = {}
    if methods:
        log(f"timing {len(methods)} methods: {args.size} batch {args.batch} seq {args.seq} on {args.device}")
        times = time_methods(methods, args, log)
        gc.collect()
        if not args.no_memory:
            for m in methods:
                t0 = time.time()
                mem[m] = memory_of(m, args)
                if "error" in mem[m]:
                    log(f"memory {m}: ERROR {mem[m]['error']}")
                else:
                    log(f"memory {m}: peak {_fmt_bytes(mem[m]['peak'])} ({time.time() - t0:.0f}s)")
            hows = {v.get("how") for v in mem.values() if "how" in v}
            cfg["mem_how"] = ", ".join(sorted(h for h in hows if h)) or "-"
    rows = build_rows(methods, times, mem) if methods else []

    analyzer_rows: list[dict[str, Any]] = []
    if not args.no_analyzers:
        import _analyzers

        analyzer_rows = _analyzers.run(args.analyzer_scale, args.analyzer_repeats, log)
        cfg["analyzer_scale"] = args.analyzer_scale

    table = render(rows, analyzer_rows, cfg)
    print("\n" + table + "\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    dev = "cuda" if args.device.startswith("cuda") else "cpu"
    doc = {"config": cfg, "machine": _machine(args.device, args.threads), "versions": _versions(),
           "seconds": round(time.time() - t_start, 1), "rows": rows, "analyzers": analyzer_rows,
           "table_markdown": table,
           "definitions": {
               "time_x_bare": "median over rounds of t(method) / t(bare) from the same round",
               "mem_peak": "peak memory during one call (RSS high-water mark on CPU, torch.cuda max allocated "
                           "on GPU) minus the memory just before it, in a fresh process with the model loaded "
                           "and one warm-up call done; the returned captures are alive at the peak reading",
               "mem_retained": "memory still held after the call by what the method returned",
               "mem_x_bare": "mem_peak(method) / mem_peak(bare)",
               "mem_total": "peak memory during the call minus the memory with the model loaded before any "
                            "forward pass (counts what the model keeps between passes, e.g. the bridge's "
                            "last-pass attention patterns)",
           }}
    for name in (f"{args.size}-{dev}-{stamp}.json", f"latest-{args.size}-{dev}.json"):
        (out / name).write_text(json.dumps(doc, indent=1, default=str))
    log(f"wrote {out / f'latest-{args.size}-{dev}.json'} ({doc['seconds']}s in all)")


if __name__ == "__main__":
    main()
