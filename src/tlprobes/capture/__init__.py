"""Probes: what to capture (or reduce) in one forward pass, and the captures they return.
The probes are re-exported from :mod:`tlprobes`.

    >>> import tlprobes as tp
    >>> from tlprobes.capture import ResidualCapture
    >>> tp.Residual(positions="last").positions
    'last'
"""

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
    # probes
    "Probe", "Residual", "Attention", "Components", "LogitLens", "Activation", "Steps",
    "ResidualMean", "HeadSteps", "Target",
    # captures
    "ResidualCapture", "AttentionCapture", "ComponentsCapture", "LogitLensCapture",
    "ActivationCapture", "StepsCapture", "ResidualMeanCapture", "HeadStepsCapture",
]
