"""One error hierarchy for tlprobes.

Every error names the bad value and the valid choices, so the message alone says what to fix::

    >>> import tlprobes as tp
    >>> try:
    ...     tp.Residual(positions="middle")
    ... except tp.errors.TLProbesError as err:
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
    "SuiteError",
    "OptionError",
    "MissingCaptureError",
    "check_index",
    "MissingExtraError",
    "choices",
]


class TLProbesError(Exception):
    """Base class of every error tlprobes raises on purpose."""


class SiteError(TLProbesError, KeyError):
    """An unknown site or hook name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class MissingCaptureError(TLProbesError, KeyError):
    """A capture name that a result does not hold (``result["residul"]``)."""

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


class OptionError(TLProbesError, ValueError):
    """An option whose value is not one of its valid choices (``top_k=0``,
    ``final_state="middle"``, ``targets="prev"``)."""


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


class SuiteError(TLProbesError, ValueError):
    """A suite file that cannot be run as written."""


class MissingExtraError(TLProbesError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra that
    installs it (``pip install 'tlprobes[data]'``)."""


def choices(values: Iterable[object], limit: int = 12) -> str:
    """Format valid choices for an error message: ``'a', 'b', 'c'`` (cut after ``limit``)."""
    vals = [repr(v) for v in values]
    if len(vals) > limit:
        return ", ".join(vals[:limit]) + f", ... ({len(vals)} in all)"
    return ", ".join(vals)


def check_index(
    value: object, n: int, *, what: str = "layer", error: type[TLProbesError] | None = None,
    of: str = "",
) -> int:
    """Validate an index into ``n`` items (layers, heads; negative counts from the end) and return
    it non-negative; else raise ``error`` (:class:`LayerError` by default) naming the value and
    the valid range. The one check behind every layer and head index.

    >>> check_index(-1, 4)
    3
    >>> check_index(4, 4, what="head", error=HeadError, of=" of the pattern")
    Traceback (most recent call last):
    ...
    tlprobes._errors.HeadError: head 4 is out of range of the pattern with 4 heads; valid: 0..3 (negative indices count from the end)
    """
    err = LayerError if error is None else error
    if not isinstance(value, (int, _np_integer())) or isinstance(value, bool):
        raise err(f"{what} must be an int, got {value!r}; valid: 0..{n - 1}")
    if not -n <= int(value) < n:
        raise err(
            f"{what} {value} is out of range{of} with {n} {what}s; valid: 0..{n - 1} "
            "(negative indices count from the end)"
        )
    return int(value) % n


def _np_integer() -> type:
    """numpy's integer base class when numpy is loaded (never imported here), else ``int``."""
    import sys

    np = sys.modules.get("numpy")
    return np.integer if np is not None else int
