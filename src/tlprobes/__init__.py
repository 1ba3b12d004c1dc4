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

The public API is exactly what this module shows; everything else lives in private modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import ArgumentError as ArgumentError
from ._errors import HeadError as HeadError
from ._errors import InputError as InputError
from ._errors import LayerError as LayerError
from ._errors import ModelError as ModelError
from ._errors import PositionError as PositionError
from ._errors import ResultsError as ResultsError
from ._errors import SessionError as SessionError
from ._errors import SiteError as SiteError
from ._errors import TLProbesError as TLProbesError
from ._errors import UnknownModelError as UnknownModelError

if TYPE_CHECKING:  # the CLI's --help must not wait for torch: these load on first use
    from ._tl.adapter import SITES as SITES
    from ._tl.adapter import Meta as Meta
    from ._tl.adapter import adapter_for as adapter_for
    from ._result import Inputs as Inputs
    from ._result import Result as Result
    from ._runner import run as run
    from ._session import Session as Session
    from ._session import attach as attach
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

__version__ = "0.1.0"

# Heavy parts (scipy, pandas, sklearn, matplotlib, circuitsvis) load on first use: `tp.angle` imports
# the analyzers, `tp.Report` the renderers.
_LAZY = {
    "SITES": ("tlprobes._tl.adapter", "SITES"),
    "Meta": ("tlprobes._tl.adapter", "Meta"),
    "adapter_for": ("tlprobes._tl.adapter", "adapter_for"),
    "Inputs": ("tlprobes._result", "Inputs"),
    "Result": ("tlprobes._result", "Result"),
    "run": ("tlprobes._runner", "run"),
    "Session": ("tlprobes._session", "Session"),
    "attach": ("tlprobes._session", "attach"),
    "Activation": ("tlprobes.capture", "Activation"),
    "Attention": ("tlprobes.capture", "Attention"),
    "Components": ("tlprobes.capture", "Components"),
    "HeadSteps": ("tlprobes.capture", "HeadSteps"),
    "LogitLens": ("tlprobes.capture", "LogitLens"),
    "Probe": ("tlprobes.capture", "Probe"),
    "Residual": ("tlprobes.capture", "Residual"),
    "ResidualMean": ("tlprobes.capture", "ResidualMean"),
    "Steps": ("tlprobes.capture", "Steps"),
    "Target": ("tlprobes.capture", "Target"),
    "analysis": ("tlprobes.analysis", None),
    "angle": ("tlprobes.analysis", "angle"),
    "angle_trajectory": ("tlprobes.analysis", "angle_trajectory"),
    "within_layer_angles": ("tlprobes.analysis", "within_layer_angles"),
    "layer_angles": ("tlprobes.analysis", "layer_angles"),
    "rotation_decomposition": ("tlprobes.analysis", "rotation_decomposition"),
    "sign_flip_test": ("tlprobes.analysis", "sign_flip_test"),
    "bootstrap_ci": ("tlprobes.analysis", "bootstrap_ci"),
    "path_length": ("tlprobes.analysis", "path_length"),
    "decompose_steps": ("tlprobes.analysis", "decompose_steps"),
    "next_token_values": ("tlprobes.analysis", "next_token_values"),
    "path_logit_correlation": ("tlprobes.analysis", "path_logit_correlation"),
    "logit_lens": ("tlprobes.analysis", "logit_lens"),
    "weight_tying": ("tlprobes.analysis", "weight_tying"),
    "unembedding_spectrum": ("tlprobes.analysis", "unembedding_spectrum"),
    "effective_rank": ("tlprobes.analysis", "effective_rank"),
    "cosine_matrix": ("tlprobes.analysis", "cosine_matrix"),
    "pca": ("tlprobes.analysis", "pca"),
    "tsne": ("tlprobes.analysis", "tsne"),
    "drift": ("tlprobes.analysis", "drift"),
    "anisotropy": ("tlprobes.analysis", "anisotropy"),
    "state_space_trajectories": ("tlprobes.analysis", "state_space_trajectories"),
    "Procrustes": ("tlprobes.analysis", "Procrustes"),
    "precision_at_k": ("tlprobes.analysis", "precision_at_k"),
    "map_embeddings": ("tlprobes.analysis", "map_embeddings"),
    "shared_vocabulary": ("tlprobes.analysis", "shared_vocabulary"),
    "align_words": ("tlprobes.analysis", "align_words"),
    "word_states": ("tlprobes.analysis", "word_states"),
    "rsa": ("tlprobes.analysis", "rsa"),
    "rdm": ("tlprobes.analysis", "rdm"),
    "cka": ("tlprobes.analysis", "cka"),
    "head_ranking": ("tlprobes.analysis", "head_ranking"),
    "head_contrast": ("tlprobes.analysis", "head_contrast"),
    "AngleAccumulator": ("tlprobes.analysis", "AngleAccumulator"),
    "PathAccumulator": ("tlprobes.analysis", "PathAccumulator"),
    "DriftAccumulator": ("tlprobes.analysis", "DriftAccumulator"),
    "AnisotropyAccumulator": ("tlprobes.analysis", "AnisotropyAccumulator"),
    "from_cache": ("tlprobes._tl.interop", "from_cache"),
    "models": ("tlprobes.models", None),
    "load_model": ("tlprobes.models", "load_model"),
    "shipped_models": ("tlprobes.models", "shipped_models"),
    "render": ("tlprobes.render", None),
    "suites": ("tlprobes.suites", None),
    "load_results": ("tlprobes.suites", "load_results"),
    "run_suite": ("tlprobes.suites", "run_suite"),
    "load_suite": ("tlprobes.suites", "load_suite"),
    "Report": ("tlprobes.render", "Report"),
    "Page": ("tlprobes.render", "Page"),
    "attention_view": ("tlprobes.render", "attention_view"),
    "attention_layers_view": ("tlprobes.render", "attention_layers_view"),
    "attention_overview": ("tlprobes.render", "attention_overview"),
    "head_summaries": ("tlprobes.render", "head_summaries"),
    "token_view": ("tlprobes.render", "token_view"),
    "logit_lens_table": ("tlprobes.render", "logit_lens_table"),
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
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "Activation", "Attention", "Components", "HeadError", "HeadSteps", "InputError", "Inputs",
    "LayerError",
    "LogitLens", "Meta", "ModelError", "PositionError", "Probe", "Residual", "ResidualMean",
    "Result", "ResultsError", "SITES", "Session", "SiteError", "Steps", "TLProbesError", "Target",
    "UnknownModelError", "ArgumentError", "SessionError",
    "adapter_for", "attach", "run",
    *_LAZY,
]
