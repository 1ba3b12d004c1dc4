"""Hook registration on TransformerLens models: add returns a handle, remove undoes exactly it.

TL's ``HookPoint.add_hook`` returns a handle on TL 4 and nothing on TL 2.x/3.x (there the handle is
the one appended last to ``fwd_hooks``); removing one must also drop it from ``fwd_hooks`` so TL's
own ``reset_hooks`` never sees a stale entry. TL 2.18's ``unembed`` has no HookPoint at all
(:class:`ModuleOutputHook` stands in). This module hides those differences::

    >>> import tlprobes as tp
    >>> from tlprobes._tl.adapter import adapter_for
    >>> model = tp.load_model("default")
    >>> seen = []
    >>> handle = add(adapter_for(model).hook_point("resid_post", 0),
    ...                   lambda t, hook=None: seen.append(tuple(t.shape)))
    >>> _ = model(model.to_tokens("Mary saw her dog."))
    >>> remove_hooks([handle])
    []
    >>> seen
    [(1, 6, 128)]

Hooks that were there before (the user's, permanent or not) are never removed or reordered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Handle", "ModuleOutputHook", "add", "add_model_hooks", "remove_hooks"]

#: the signature of a hook: ``fn(activation, hook=point)``; its return value is ignored
HookFn = Callable[..., Any]


class ModuleOutputHook:
    """A forward hook on a plain ``nn.Module`` that behaves like a HookPoint hook.

    Used for the logits of TL 2.18, whose ``unembed`` has no HookPoint.
    """

    def __init__(self, module: torch.nn.Module, name: str):
        self.module = module
        self.name = name

    def add(self, fn: HookFn) -> Any:
        def torch_hook(_module: torch.nn.Module, _inputs: Any, output: Tensor) -> None:
            fn(output, hook=self)

        return self.module.register_forward_hook(torch_hook)


@dataclass(frozen=True, eq=False)
class Handle:
    """One hook this package added: the HookPoint it sits on (``None``: a torch module hook)."""

    point: Any
    handle: Any

    def remove(self) -> None:
        """Remove exactly this hook (and its ``fwd_hooks`` entry on a HookPoint)."""
        if self.point is None:
            self.handle.remove()
            return
        self.handle.hook.remove()
        self.point.fwd_hooks = [h for h in self.point.fwd_hooks if h is not self.handle]


def add(point: Any, fn: HookFn) -> Handle:
    """Add ``fn`` as a forward hook on ``point`` (a HookPoint or :class:`ModuleOutputHook`)."""
    if isinstance(point, ModuleOutputHook):
        return Handle(None, point.add(fn))
    handle = point.add_hook(fn, dir="fwd")
    if handle is None:  # TL 2.x/3.x return nothing; the handle was appended last
        handle = point.fwd_hooks[-1]
    return Handle(point, handle)


def add_model_hooks(
    model: torch.nn.Module,
    *,
    pre: Callable[[Any, tuple[Any, ...], dict[str, Any]], None],
    post: Callable[[Any, Any, Any], None],
    end: Callable[[Any, Any, Any], None],
) -> tuple[Handle, Handle, Handle]:
    """Hooks around each call of the model itself: ``pre(module, args, kwargs)`` before it (reads
    the tokens and ``attention_mask``), ``post`` after a pass that returned, and ``end`` after
    every pass, also one that raised."""
    return (
        Handle(None, model.register_forward_pre_hook(pre, with_kwargs=True)),
        Handle(None, model.register_forward_hook(post)),
        Handle(None, model.register_forward_hook(end, always_call=True)),
    )


def remove_hooks(handles: Sequence[Handle]) -> list[BaseException]:
    """Remove ``handles`` last-added first; keeps going past a failure and returns the errors."""
    errors: list[BaseException] = []
    for handle in reversed(handles):
        try:
            handle.remove()
        except BaseException as err:  # keep removing the rest
            errors.append(err)
    return errors
