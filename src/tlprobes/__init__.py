"""tlprobes: composable one-pass probes, analyzers and offline renderers for TransformerLens.

::

    >>> import tlprobes as tp
    >>> model = tp.load_model()            # the shipped 4-layer model, or any TL model of yours
    >>> prompts = ["Mary saw her brother.", "John gave her a book."]
    >>> with tp.attach(model, tp.Residual(), tp.Attention(layers=[0, 2]), tp.LogitLens(top_k=5)) as s:
    ...     _ = model(prompts)             # any forward call of yours
    >>> s.result.residual.resid.shape      # [x_0..x_4, batch, pos, d_model]
    torch.Size([5, 2, 7, 128])
    >>> result = tp.run(model, prompts, tp.Residual(positions="last"), batch_size=16)
    >>> result.residual.resid.shape
    torch.Size([5, 2, 1, 128])

The public API is exactly ``__all__``: capture (``attach``, ``run`` and the probes), loading, the
two headline analyzers, and the submodules ``analysis`` (every analyzer), ``render`` (views and
reports), ``suites``, ``models`` and ``errors`` (every error type). Everything else lives in
private modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import TLProbesError as TLProbesError

if TYPE_CHECKING:  # the CLI's --help must not wait for torch: these load on first use
    from . import analysis as analysis
    from . import errors as errors
    from . import models as models
    from . import render as render
    from . import suites as suites
    from ._result import Result as Result
    from ._runner import run as run
    from ._session import Session as Session
    from ._session import attach as attach
    from ._tl.interop import from_cache as from_cache
    from .analysis import angle_trajectory as angle_trajectory
    from .analysis import path_length as path_length
    from .capture import Activation as Activation
    from .capture import Attention as Attention
    from .capture import Components as Components
    from .capture import HeadSteps as HeadSteps
    from .capture import LogitLens as LogitLens
    from .capture import Probe as Probe
    from .capture import Residual as Residual
    from .capture import ResidualMean as ResidualMean
    from .capture import Steps as Steps
    from .capture import Target as Target
    from .models import load_model as load_model
    from .render import Report as Report
    from .suites import load_results as load_results

from ._version import __version__ as __version__

# Heavy parts (torch, scipy, pandas, sklearn, matplotlib, circuitsvis) load on first use:
# `tp.Residual` imports the probes, `tp.analysis` the analyzers, `tp.Report` the renderers.
_LAZY = {
    "attach": ("tlprobes._session", "attach"),
    "run": ("tlprobes._runner", "run"),
    "Session": ("tlprobes._session", "Session"),
    "Result": ("tlprobes._result", "Result"),
    "Target": ("tlprobes.capture", "Target"),
    "Probe": ("tlprobes.capture", "Probe"),
    "Residual": ("tlprobes.capture", "Residual"),
    "Attention": ("tlprobes.capture", "Attention"),
    "Components": ("tlprobes.capture", "Components"),
    "LogitLens": ("tlprobes.capture", "LogitLens"),
    "Activation": ("tlprobes.capture", "Activation"),
    "Steps": ("tlprobes.capture", "Steps"),
    "ResidualMean": ("tlprobes.capture", "ResidualMean"),
    "HeadSteps": ("tlprobes.capture", "HeadSteps"),
    "load_model": ("tlprobes.models", "load_model"),
    "load_results": ("tlprobes.suites", "load_results"),
    "from_cache": ("tlprobes._tl.interop", "from_cache"),
    "Report": ("tlprobes.render", "Report"),
    "angle_trajectory": ("tlprobes.analysis", "angle_trajectory"),
    "path_length": ("tlprobes.analysis", "path_length"),
    "analysis": ("tlprobes.analysis", None),
    "render": ("tlprobes.render", None),
    "suites": ("tlprobes.suites", None),
    "models": ("tlprobes.models", None),
    "errors": ("tlprobes.errors", None),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        value = mod if attr is None else getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tlprobes' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | {"__version__"})


__all__ = ["TLProbesError", *_LAZY]
