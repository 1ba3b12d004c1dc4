"""Renderers: offline circuitsvis pages, token views, matplotlib figures and the HTML report.

Every renderer is a function of plain arrays and labels (numpy or torch) and returns a ``Page``
(attention and token views), a matplotlib ``Figure`` (plots) or a ``Report``. Pages and reports
display themselves in Jupyter and save to one self-contained HTML file: the circuitsvis bundle is
inlined once, every string is escaped, and nothing is fetched from the network.

This module exports the views, pages, plots and ``Report`` (and the notebook setting
``notebook_bundle``); the machinery (escaping, the inlined bundle, figure embedding, the default
views that captures and results show, in ``_views``) stays in private modules.

    >>> import numpy as np
    >>> from tlprobes.render import Report, attention_view
    >>> pat = np.tril(np.ones((2, 4, 4))); pat /= pat.sum(-1, keepdims=True)
    >>> rep = Report("demo", {"model": "toy"}).add_view(attention_view(pat, ["a", "b", "c", "d"]))
"""

from __future__ import annotations

from ._attention import attention_layers_view as attention_layers_view
from ._attention import attention_overview as attention_overview
from ._attention import attention_prompts_view as attention_prompts_view
from ._attention import attention_view as attention_view
from ._attention import head_summaries as head_summaries
from ._page import Page as Page
from ._plots import plot_cosine_heatmap as plot_cosine_heatmap
from ._plots import plot_head_heatmap as plot_head_heatmap
from ._plots import plot_layer_profiles as plot_layer_profiles
from ._plots import plot_path_decomposition as plot_path_decomposition
from ._plots import plot_procrustes as plot_procrustes
from ._plots import plot_scatter as plot_scatter
from ._plots import plot_scree as plot_scree
from ._plots import plot_trajectories as plot_trajectories
from ._report import Report as Report
from ._repr import notebook_bundle as notebook_bundle
from ._tokens import logit_lens_table as logit_lens_table
from ._tokens import token_view as token_view

__all__ = [
    "Page",
    "Report",
    "attention_layers_view",
    "attention_overview",
    "attention_prompts_view",
    "attention_view",
    "head_summaries",
    "logit_lens_table",
    "notebook_bundle",
    "plot_cosine_heatmap",
    "plot_head_heatmap",
    "plot_layer_profiles",
    "plot_path_decomposition",
    "plot_procrustes",
    "plot_scatter",
    "plot_scree",
    "plot_trajectories",
    "token_view",
]
