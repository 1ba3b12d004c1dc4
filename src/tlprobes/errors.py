"""Every error type tlprobes raises, in one public module.

    >>> import tlprobes as tp
    >>> try:
    ...     tp.Residual(positions="middle")
    ... except tp.errors.PositionError as err:
    ...     print(isinstance(err, ValueError), isinstance(err, tp.TLProbesError))
    True True

Each type subclasses :class:`TLProbesError` and the matching built-in (``ValueError``,
``KeyError``, ``TypeError``, ``IndexError``, ``RuntimeError``), so ``except ValueError`` keeps
working in code that does not know tlprobes.
"""

from __future__ import annotations

from ._errors import ArgumentError as ArgumentError
from ._errors import HeadError as HeadError
from ._errors import InputError as InputError
from ._errors import LayerError as LayerError
from ._errors import MissingCaptureError as MissingCaptureError
from ._errors import MissingExtraError as MissingExtraError
from ._errors import ModelError as ModelError
from ._errors import OptionError as OptionError
from ._errors import PositionError as PositionError
from ._errors import ResultsError as ResultsError
from ._errors import SessionError as SessionError
from ._errors import SiteError as SiteError
from ._errors import SuiteError as SuiteError
from ._errors import TLProbesError as TLProbesError
from ._errors import UnknownModelError as UnknownModelError

__all__ = [
    "TLProbesError",
    "ArgumentError",
    "HeadError",
    "InputError",
    "LayerError",
    "MissingCaptureError",
    "MissingExtraError",
    "ModelError",
    "OptionError",
    "PositionError",
    "ResultsError",
    "SessionError",
    "SiteError",
    "SuiteError",
    "UnknownModelError",
]
