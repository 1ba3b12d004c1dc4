"""Analyzers: captures (or plain arrays) in, typed results with numbers, statistics and a tidy
``.to_frame()`` out. Nothing here touches a model.

    >>> import numpy as np
    >>> import tlprobes.analysis as ta
    >>> float(ta.angle(np.array([1.0, 0.0]), np.array([0.0, 3.0])))
    90.0
"""

from __future__ import annotations

from ._angles import CONTROLS as CONTROLS
from ._angles import AngleAccumulator as AngleAccumulator
from ._angles import AngleTrajectory as AngleTrajectory
from ._angles import WithinLayerAngles as WithinLayerAngles
from ._angles import angle as angle
from ._angles import angle_trajectory as angle_trajectory
from ._angles import layer_angles as layer_angles
from ._angles import within_layer_angles as within_layer_angles
from ._angles import RotationDecomposition as RotationDecomposition
from ._angles import rotation_decomposition as rotation_decomposition
from ._anisotropy import Anisotropy as Anisotropy
from ._anisotropy import AnisotropyAccumulator as AnisotropyAccumulator
from ._drift import Drift as Drift
from ._drift import DriftAccumulator as DriftAccumulator
from ._geometry import PCAResult as PCAResult
from ._geometry import StateSpace as StateSpace
from ._geometry import TSNEResult as TSNEResult
from ._anisotropy import anisotropy as anisotropy
from ._geometry import cosine_matrix as cosine_matrix
from ._drift import drift as drift
from ._geometry import pca as pca
from ._geometry import state_space_trajectories as state_space_trajectories
from ._geometry import tsne as tsne
from ._heads import HeadContrast as HeadContrast
from ._heads import HeadRanking as HeadRanking
from ._heads import head_contrast as head_contrast
from ._heads import head_ranking as head_ranking
from ._lens import LogitLensResult as LogitLensResult
from ._lens import Spectrum as Spectrum
from ._lens import WeightTying as WeightTying
from ._lens import effective_rank as effective_rank
from ._lens import logit_lens as logit_lens
from ._lens import unembedding_spectrum as unembedding_spectrum
from ._lens import weight_tying as weight_tying
from ._paths import PathAccumulator as PathAccumulator
from ._paths import PathLength as PathLength
from ._paths import PathSummary as PathSummary
from ._paths import StepDecomposition as StepDecomposition
from ._paths import decompose_steps as decompose_steps
from ._paths import next_token_values as next_token_values
from ._paths import path_length as path_length
from ._paths import path_logit_correlation as path_logit_correlation
from ._align import WordAlignment as WordAlignment
from ._align import WordStates as WordStates
from ._align import align_words as align_words
from ._align import depth_pairing as depth_pairing
from ._align import nearest_neighbors as nearest_neighbors
from ._align import retrieval_precision as retrieval_precision
from ._align import retrieval_ranks as retrieval_ranks
from ._align import word_states as word_states
from ._procrustes import EmbeddingMap as EmbeddingMap
from ._procrustes import Procrustes as Procrustes
from ._procrustes import map_embeddings as map_embeddings
from ._procrustes import precision_at_k as precision_at_k
from ._procrustes import shared_vocabulary as shared_vocabulary
from ._rsa import RSAResult as RSAResult
from ._rsa import cka as cka
from ._rsa import rdm as rdm
from ._rsa import rsa as rsa
from ._stats import Correlation as Correlation
from ._stats import IndependentTest as IndependentTest
from ._stats import LayerSummary as LayerSummary
from ._stats import PairedTest as PairedTest
from ._stats import adjust_pvalues as adjust_pvalues
from ._stats import correlation as correlation
from ._stats import independent_test as independent_test
from ._stats import layer_summary as layer_summary
from ._stats import paired_test as paired_test
from ._stats import BootstrapCI as BootstrapCI
from ._stats import SignFlipTest as SignFlipTest
from ._stats import bootstrap_ci as bootstrap_ci
from ._stats import sign_flip_test as sign_flip_test
from ._stream import StreamedSummary as StreamedSummary

__all__ = [
    "CONTROLS", "AngleAccumulator", "AngleTrajectory", "WithinLayerAngles", "angle",
    "angle_trajectory", "layer_angles", "within_layer_angles", "RotationDecomposition",
    "rotation_decomposition",
    "Anisotropy", "AnisotropyAccumulator", "Drift", "DriftAccumulator", "PCAResult", "StateSpace",
    "TSNEResult", "anisotropy", "cosine_matrix", "drift", "pca", "state_space_trajectories", "tsne",
    "HeadContrast", "HeadRanking", "head_contrast", "head_ranking",
    "LogitLensResult", "Spectrum", "WeightTying", "effective_rank", "logit_lens",
    "unembedding_spectrum", "weight_tying",
    "PathAccumulator", "PathLength", "PathSummary", "StepDecomposition", "decompose_steps",
    "next_token_values", "path_length", "path_logit_correlation",
    "EmbeddingMap", "Procrustes", "map_embeddings", "precision_at_k", "shared_vocabulary",
    "WordAlignment", "WordStates", "align_words", "depth_pairing", "nearest_neighbors",
    "retrieval_precision", "retrieval_ranks", "word_states",
    "RSAResult", "cka", "rdm", "rsa",
    "Correlation", "IndependentTest", "LayerSummary", "PairedTest", "adjust_pvalues", "correlation",
    "independent_test", "layer_summary", "paired_test", "StreamedSummary",
    "BootstrapCI", "SignFlipTest", "bootstrap_ci", "sign_flip_test",
]
