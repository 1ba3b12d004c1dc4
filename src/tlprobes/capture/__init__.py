"""Probes: what to capture (or reduce) in one forward pass. Re-exported from :mod:`tlprobes`."""

from ._base import BatchContext as BatchContext
from ._base import Probe as Probe
from ._positions import Target as Target
from .activation import Activation as Activation
from .activation import ActivationCapture as ActivationCapture
from .attention import Attention as Attention
from .attention import AttentionCapture as AttentionCapture
from .components import Components as Components
from .components import ComponentsCapture as ComponentsCapture
from .heads import HeadSteps as HeadSteps
from .heads import HeadStepsCapture as HeadStepsCapture
from .logit_lens import LogitLens as LogitLens
from .logit_lens import LogitLensCapture as LogitLensCapture
from .reducers import ResidualMean as ResidualMean
from .reducers import ResidualMeanCapture as ResidualMeanCapture
from .reducers import Steps as Steps
from .reducers import StepsCapture as StepsCapture
from .residual import Residual as Residual
from .residual import ResidualCapture as ResidualCapture

__all__ = [
    "Activation", "ActivationCapture", "Attention", "AttentionCapture", "BatchContext",
    "Components", "ComponentsCapture", "HeadSteps", "HeadStepsCapture", "LogitLens", "LogitLensCapture", "Probe", "Residual",
    "ResidualCapture", "ResidualMean", "ResidualMeanCapture", "Steps", "StepsCapture", "Target",
]
