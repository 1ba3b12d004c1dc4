"""The result types the analyzers return: frozen dataclasses with ``.to_frame()`` (a tidy table
with the columns ``layer, group, statistic, value``), a notebook face and ``.plot()``.

    >>> import numpy as np
    >>> import tlprobes.analysis as ta
    >>> from tlprobes.analysis.results import PCAResult
    >>> r = ta.pca(np.random.default_rng(0).normal(size=(20, 3)))
    >>> isinstance(r, PCAResult), list(r.to_frame().columns)
    (True, ['layer', 'group', 'statistic', 'value'])

They are listed here for ``isinstance`` checks and type hints; the analyzers in
:mod:`tlprobes.analysis` build them.
"""

from __future__ import annotations

from ._align import Neighbors as Neighbors
from ._align import RetrievalPrecision as RetrievalPrecision
from ._align import WordAlignment as WordAlignment
from ._align import WordStates as WordStates
from ._angles import AngleTrajectory as AngleTrajectory
from ._angles import RotationDecomposition as RotationDecomposition
from ._angles import WithinLayerAngles as WithinLayerAngles
from ._anisotropy import Anisotropy as Anisotropy
from ._drift import Drift as Drift
from ._heads import HeadContrast as HeadContrast
from ._heads import HeadRanking as HeadRanking
from ._lens import LogitLensResult as LogitLensResult
from ._lens import Spectrum as Spectrum
from ._lens import WeightTying as WeightTying
from ._paths import PathLength as PathLength
from ._paths import PathSummary as PathSummary
from ._paths import StepDecomposition as StepDecomposition
from ._pca import PCAResult as PCAResult
from ._procrustes import EmbeddingMap as EmbeddingMap
from ._procrustes import SharedVocabulary as SharedVocabulary
from ._rsa import RSAResult as RSAResult
from ._stats import BootstrapCI as BootstrapCI
from ._stats import Correlation as Correlation
from ._stats import IndependentTest as IndependentTest
from ._stats import LayerSummary as LayerSummary
from ._stats import PairedTest as PairedTest
from ._stats import SignFlipTest as SignFlipTest
from ._stream import StreamedSummary as StreamedSummary
from ._trajectories import StateSpace as StateSpace
from ._tsne import TSNEResult as TSNEResult

__all__ = [
    "AngleTrajectory", "WithinLayerAngles", "RotationDecomposition",
    "PathLength", "StepDecomposition", "PathSummary",
    "LogitLensResult", "WeightTying", "Spectrum",
    "PCAResult", "TSNEResult", "Drift", "Anisotropy", "StateSpace",
    "HeadRanking", "HeadContrast",
    "EmbeddingMap", "SharedVocabulary", "WordAlignment", "WordStates", "Neighbors",
    "RetrievalPrecision", "RSAResult",
    "LayerSummary", "PairedTest", "IndependentTest", "Correlation", "SignFlipTest", "BootstrapCI",
    "StreamedSummary",
]
