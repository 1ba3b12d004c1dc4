"""Analyzers: captures (or plain arrays) in, typed results with numbers, statistics and a tidy
``.to_frame()`` out. Nothing here touches a model.

    >>> import numpy as np
    >>> import tlprobes.analysis as ta
    >>> float(ta.angle(np.array([1.0, 0.0]), np.array([0.0, 3.0])))
    90.0

``__all__`` holds the analyzer functions, the statistics helpers, :class:`Procrustes` and the
streaming accumulators; the result types they return are listed in
:mod:`tlprobes.analysis.results`.
"""

from __future__ import annotations

from ._align import align_words as align_words
from ._align import depth_pairing as depth_pairing
from ._align import nearest_neighbors as nearest_neighbors
from ._align import retrieval_precision as retrieval_precision
from ._align import retrieval_ranks as retrieval_ranks
from ._align import word_states as word_states
from ._angles import CONTROLS as CONTROLS
from ._angles import AngleAccumulator as AngleAccumulator
from ._angles import angle as angle
from ._angles import angle_trajectory as angle_trajectory
from ._angles import layer_angles as layer_angles
from ._angles import rotation_decomposition as rotation_decomposition
from ._angles import within_layer_angles as within_layer_angles
from ._anisotropy import AnisotropyAccumulator as AnisotropyAccumulator
from ._anisotropy import anisotropy as anisotropy
from ._cosine import cosine_matrix as cosine_matrix
from ._drift import DriftAccumulator as DriftAccumulator
from ._drift import drift as drift
from ._heads import head_contrast as head_contrast
from ._heads import head_ranking as head_ranking
from ._lens import effective_rank as effective_rank
from ._lens import lens_readout as lens_readout
from ._lens import unembedding_spectrum as unembedding_spectrum
from ._lens import weight_tying as weight_tying
from ._paths import PathAccumulator as PathAccumulator
from ._paths import decompose_steps as decompose_steps
from ._paths import next_token_values as next_token_values
from ._paths import path_length as path_length
from ._paths import path_logit_correlation as path_logit_correlation
from ._pca import pca as pca
from ._procrustes import Procrustes as Procrustes
from ._procrustes import map_embeddings as map_embeddings
from ._procrustes import precision_at_k as precision_at_k
from ._procrustes import shared_vocabulary as shared_vocabulary
from ._rsa import cka as cka
from ._rsa import rdm as rdm
from ._rsa import rsa as rsa
from ._stats import adjust_pvalues as adjust_pvalues
from ._stats import bootstrap_ci as bootstrap_ci
from ._stats import correlation as correlation
from ._stats import independent_test as independent_test
from ._stats import layer_summary as layer_summary
from ._stats import paired_test as paired_test
from ._stats import sign_flip_test as sign_flip_test
from ._trajectories import state_space_trajectories as state_space_trajectories
from ._tsne import tsne as tsne

__all__ = [
    # angles
    "angle", "angle_trajectory", "layer_angles", "within_layer_angles", "rotation_decomposition",
    # paths
    "path_length", "decompose_steps", "next_token_values", "path_logit_correlation",
    # lens and unembedding
    "lens_readout", "weight_tying", "unembedding_spectrum", "effective_rank",
    # embedding geometry
    "cosine_matrix", "pca", "tsne", "drift", "anisotropy", "state_space_trajectories",
    # heads
    "head_ranking", "head_contrast",
    # cross-model comparison
    "Procrustes", "map_embeddings", "precision_at_k", "shared_vocabulary", "align_words",
    "word_states", "depth_pairing", "nearest_neighbors", "retrieval_ranks", "retrieval_precision",
    "rsa", "rdm", "cka",
    # statistics helpers
    "layer_summary", "paired_test", "independent_test", "adjust_pvalues", "correlation",
    "sign_flip_test", "bootstrap_ci",
    # streaming accumulators
    "AngleAccumulator", "PathAccumulator", "DriftAccumulator", "AnisotropyAccumulator",
]
