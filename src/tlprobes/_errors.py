"""One error hierarchy for tlprobes.

Every error names the bad value and the valid choices, so the message alone says what to fix::

    >>> import tlprobes as tp
    >>> try:
    ...     tp.Residual(positions="middle")
    ... except tp.TLProbesError as err:
    ...     print(type(err).__name__)
    PositionError

Each subclass also subclasses the matching built-in (``ValueError``, ``KeyError``, ``TypeError``,
``IndexError``, ``RuntimeError``), so ``except ValueError`` keeps working in code that does not know tlprobes.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "TLProbesError",
    "SiteError",
    "LayerError",
    "HeadError",
    "PositionError",
    "InputError",
    "ModelError",
    "ResultsError",
    "UnknownModelError",
    "ArgumentError",
    "SessionError",
    "MissingExtraError",
    "choices",
]


class TLProbesError(Exception):
    """Base class of every error tlprobes raises on purpose."""


class SiteError(TLProbesError, KeyError):
    """An unknown site or hook name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class LayerError(TLProbesError, IndexError):
    """A layer index outside the model."""


class HeadError(TLProbesError, IndexError):
    """A head index outside the model."""


class PositionError(TLProbesError, ValueError):
    """A position selector that cannot be resolved (bad spec, target absent, index out of range)."""


class InputError(TLProbesError, ValueError):
    """Bad prompts or tokens: too long for the model, mixed strings and tokens, bad masks."""


class ModelError(TLProbesError, TypeError):
    """Something that is not a TransformerLens model, or one we cannot read."""


class UnknownModelError(TLProbesError, ValueError):
    """A model name that is not shipped, not a local directory, and not loadable by TL."""


class ResultsError(TLProbesError, ValueError):
    """A saved run that is missing, truncated or tampered with."""


class ArgumentError(TLProbesError, TypeError):
    """An argument of the wrong type (``batch_size=True``, ``dtype=torch.int32``) or an unknown
    keyword argument (``paddingside=``)."""


class SessionError(TLProbesError, RuntimeError):
    """A session used in a way it cannot capture correctly: entered twice, attached to a model that a
    session in another thread holds, or a forward pass inside it that tlprobes cannot see
    (``run_with_cache`` / ``run_with_hooks`` on a bridge, a nested forward)."""


class MissingExtraError(TLProbesError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra that
    installs it (``pip install 'tlprobes[data]'``)."""


def choices(values: Iterable[object], limit: int = 12) -> str:
    """Format valid choices for an error message: ``'a', 'b', 'c'`` (cut after ``limit``)."""
    vals = [repr(v) for v in values]
    if len(vals) > limit:
        return ", ".join(vals[:limit]) + f", ... ({len(vals)} in all)"
    return ", ".join(vals)
