"""The contract between a suite and the study it runs.

A study turns a model and prompts into tidy tables (``compute``), and tables into a report
(``render``). Nothing flows backwards: ``render`` only reads what ``compute`` produced, so
``tlprobes render DIR`` rebuilds a report from a run directory without a model::

    class Angles:
        name = "angles"
        schema = {"controls": ([str], ["course", "clean"]), "alpha": (float, 0.05)}
        def compute(self, ctx: StudyContext) -> StudyOutput: ...
        def render(self, out: StudyOutput, manifest: dict) -> Report: ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

__all__ = ["Study", "StudyContext", "StudyOutput"]


@dataclass
class StudyContext:
    """What a study's ``compute`` gets: models, prompts, settings."""

    model: Any
    prompts: list[str]
    columns: dict[str, list[str]]
    target: str
    analysis: dict[str, Any]
    batch_size: int = 16
    padding_side: str = "right"
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    second_model: Any = None


@dataclass
class StudyOutput:
    """What a study's ``compute`` returns.

    ``tables``: tidy DataFrames (written as CSV); ``view_data``: small tensors the report needs
    (attention patterns of a few prompts, 2-D projections; always saved); ``arrays``: big raw
    arrays (residual states, masks, patterns), saved only on request (``--save-arrays``, as
    ``captures.safetensors``); ``facts``: small JSON-able numbers and labels.
    """

    tables: dict[str, Any] = field(default_factory=dict)
    view_data: dict[str, torch.Tensor] = field(default_factory=dict)
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


class Study(Protocol):
    name: str
    title: str
    schema: dict[str, tuple[Any, Any]]

    def compute(self, ctx: StudyContext) -> StudyOutput: ...

    def render(self, out: StudyOutput, manifest: dict[str, Any]) -> Any: ...
