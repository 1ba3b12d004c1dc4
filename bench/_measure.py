"""Peak memory of one call, read the same way for every method.

CPU: the kernel's high-water mark of resident memory (``VmHWM``), reset right before the call by
writing ``5`` to ``/proc/self/clear_refs`` (Linux). Where that is not allowed, a thread samples RSS
every 0.5 ms instead (it may miss short spikes; the JSON records which way was used). GPU:
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.

What is compared: ``peak`` is the high-water mark during the call minus the process's memory just
before it (model loaded, one warm-up call done and freed, ``gc.collect()`` and ``malloc_trim``), with
whatever the method returns still alive at the end. ``retained`` is the memory still held by the
returned captures afterwards. ``total`` is the same high-water mark minus the memory with the model
loaded *before any forward pass* (``floor``): it counts what the model itself keeps between passes
(TL 4.3's bridge keeps the last pass's attention pattern of every layer), which ``peak`` leaves out
of its baseline. Compare attention captures on ``total``: a method that takes over the bridge's
patterns (tlprobes) starts a call from a lower baseline than one that leaves them to the bridge
(run_with_cache), so ``peak`` alone would count the same bytes against one and not the other.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from collections.abc import Callable
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss() -> int:
    v = _status_kb("VmRSS")
    if v is not None:
        return v
    import psutil

    return psutil.Process().memory_info().rss


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


def trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class _Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = rss()
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, rss())
            time.sleep(0.0005)


def measure_cpu(call: Callable[[], Any], floor: int | None = None) -> dict[str, Any]:
    trim()
    base = rss()
    sampler = None
    how = "VmHWM (clear_refs)"
    if not _reset_hwm():
        how = "RSS sampled every 0.5 ms"
        sampler = _Sampler()
        sampler.start()
    kept = call()
    if sampler is not None:
        sampler.stop = True
        sampler.join()
        peak = max(sampler.peak, rss())
    else:
        peak = _status_kb("VmHWM") or rss()
    after = rss()
    del kept
    return {"peak": peak - base, "retained": after - base, "how": how,
            "total": None if floor is None else peak - floor}


def floor_cpu() -> int:
    trim()
    return rss()


def floor_cuda() -> int:
    import torch

    trim()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def measure_cuda(call: Callable[[], Any], floor: int | None = None) -> dict[str, Any]:
    import torch

    trim()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    kept = call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    after = torch.cuda.memory_allocated()
    del kept
    return {"peak": peak - base, "retained": after - base, "how": "torch.cuda.max_memory_allocated",
            "total": None if floor is None else peak - floor}
