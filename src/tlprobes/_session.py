"""``attach``: register probes as TransformerLens hooks for the forward passes inside a ``with`` block.

::

    >>> import tlprobes as tp
    >>> with tp.attach(model, tp.Residual(), tp.Attention(layers=[0])) as session:   # doctest: +SKIP
    ...     model(tokens, attention_mask=mask)
    >>> session.result.residual.resid.shape                                          # doctest: +SKIP

One hook is registered per ``(site, layer)`` that any probe needs, plus a forward pre-hook and
post-hook on the model that read the tokens and ``attention_mask`` of each call
(:mod:`tlprobes._tl.hooks` adds them and returns handles; :mod:`tlprobes._tl.tokens` reads the
input). The session routes each activation to the probes that asked for it and merges their pieces
into a :class:`~tlprobes.Result`. On exit, exactly its handles are removed, in a ``finally``
block: a forward pass that raises leaves no tlprobes hook behind, and hooks that were there before
(the user's, permanent or not) are never removed or reordered.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from ._errors import ArgumentError, InputError, SessionError, choices
from ._result import Inputs, Result
from ._tl import hooks as _hooks
from ._tl import tokens as _tokens
from ._tl.adapter import Adapter, adapter_for
from ._tl.attn_impl import PATTERN_SITES, Switch, use_fastest
from .capture._base import BatchContext, Probe

__all__ = ["Session", "attach"]

# model id -> the sessions attached to it now (with the thread that attached each)
_ACTIVE: dict[int, list[Session]] = {}
_ACTIVE_LOCK = threading.Lock()
_FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def check_dtype(dtype: Any) -> torch.dtype | None:
    """``None``, a floating ``torch.dtype``, or its name (``"float16"``); anything else is an error."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        value = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(value, torch.dtype) or not value.is_floating_point:
            raise ArgumentError(f"dtype {dtype!r} is not a floating dtype; valid: {choices(_FLOAT_DTYPES)} "
                                "(or torch.float16 ...), or None for the model's")
        return value
    if not isinstance(dtype, torch.dtype):
        raise ArgumentError(f"dtype must be a torch dtype or its name, got {type(dtype).__name__} "
                            f"{dtype!r}; valid: {choices(_FLOAT_DTYPES)}")
    if not dtype.is_floating_point:
        raise ArgumentError(f"dtype {dtype} would truncate the captured activations; valid: floating "
                            f"dtypes ({choices(_FLOAT_DTYPES)}) or None for the model's")
    return dtype


def check_device(device: Any) -> Any:
    """``None``, a ``torch.device`` or a string torch can parse."""
    if device is None or isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise ArgumentError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}")
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {device!r}; valid: 'cpu', 'cuda', 'cuda:N', 'mps', or None "
                         "(keep captures where the model is)") from None
    return device


class Session:
    """Probes attached to one model. Use :func:`attach` to make one."""

    def __init__(
        self,
        model: Any,
        probes: Sequence[Any],
        *,
        device: torch.device | str | None = "cpu",
        dtype: torch.dtype | str | None = None,
    ):
        self.adapter: Adapter = adapter_for(model)
        self.model = model
        self.probes = _check_probes(probes)
        self.device = check_device(device)
        self.dtype = check_dtype(dtype)
        # plan: validate every probe against the model before anything is registered
        self._routes: dict[tuple[str, int | None], list[Probe]] = {}
        for probe in self.probes:
            for site_layer in probe.plan(self.adapter):
                self._routes.setdefault(site_layer, []).append(probe)
        self._points = {key: self.adapter.hook_point(*key) for key in self._routes}
        self._handles: list[_hooks.Handle] = []
        self._ctx: BatchContext | None = None
        self._scratch: dict[str, dict[str, Any]] = {}
        self._pieces: dict[str, list[dict[str, Any]]] = {p.name: [] for p in self.probes}
        self._inputs: list[Inputs] = []
        self._unfinished: BatchContext | None = None  # the last batch, before finish_batch
        self._call_prompts: list[str] | None = None  # the prompts of the call :meth:`forward` makes
        self.attached = False
        self._entered = False
        self._thread: int | None = None  # the thread that attached; others' forwards are ignored
        self._in_forward = False
        self._finishing = False
        self._attn = Switch([])  # the attention kernel of the attached passes (_tl.attn_impl)

    # ---------------------------------------------------------------- registration
    def __enter__(self) -> Session:
        if self._entered:
            raise SessionError(
                "this session is already inside a `with` block; entering it again would detach its "
                "probes when the inner block ends. Use one `with`, or make a second session"
            )
        if not self.attached:
            self.attach()
        self._entered = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._entered = False
        self.detach()

    def attach(self) -> Session:
        """Register the hooks (``with`` does this for you).

        Raises :class:`~tlprobes.SessionError` if a session attached from another thread holds the
        same model: hooks are per model, so two threads' forward passes would mix their rows.
        """
        if self.attached:
            raise SessionError("this session is already attached")
        me = threading.get_ident()
        with _ACTIVE_LOCK:
            others = [s for s in _ACTIVE.get(id(self.model), []) if s._thread != me]
            if others:
                raise SessionError(
                    f"{self.adapter.meta.model_name!r} already has tlprobes attached from another "
                    "thread; sessions on one model cannot run from several threads at once (their "
                    "forward passes would share hooks). Use one thread per model, or a copy of the "
                    "model per thread"
                )
            _ACTIVE.setdefault(id(self.model), []).append(self)
        self._thread = me
        try:
            self._handles += _hooks.add_model_hooks(
                self.model, pre=self._pre_forward, post=self._post_forward, end=self._end_forward
            )  # in the list at once: a later failure removes them too
            for key, point in self._points.items():
                self._handles.append(_hooks.add(point, self._make_hook(key, self._routes[key])))
            needs = any(site in PATTERN_SITES for site, _ in self._routes)
            self._attn = use_fastest(self.model, needs_pattern=needs)
        except BaseException:
            self.detach()
            raise
        self.attached = True
        return self

    def detach(self) -> None:
        """Remove exactly the hooks this session added; safe to call twice."""
        handles, self._handles = self._handles, []
        self._attn.restore()
        errors = _hooks.remove_hooks(handles)
        self._ctx = None
        self._in_forward = False
        self.attached = False
        with _ACTIVE_LOCK:
            mine = _ACTIVE.get(id(self.model), [])
            if self in mine:
                mine.remove(self)
            if not mine:
                _ACTIVE.pop(id(self.model), None)
        if errors:
            raise errors[0]
        self.finish()

    def forward(
        self,
        tokens: Int[Tensor, "batch seq"],
        attention_mask: Int[Tensor, "batch seq"],
        *,
        prompts: list[str] | None = None,
        **forward_kwargs: Any,
    ) -> Any:
        """Call the model on one padded batch (moved to the model's device); ``prompts`` name the
        rows in error messages. What ``tp.run`` does per batch::

            >>> with tp.attach(model, tp.Residual()) as s:          # doctest: +SKIP
            ...     s.forward(tokens, mask, prompts=["Mary saw her dog."])
        """
        device = self.adapter.meta.device
        self._call_prompts = prompts
        try:
            return self.model(
                tokens.to(device), attention_mask=attention_mask.to(device), **forward_kwargs
            )
        finally:
            self._call_prompts = None

    def finish(self) -> None:
        """Run the probes' deferred per-batch work (e.g. the logit lens) for the last forward call.

        Called for you: after each batch by ``tp.run``, before the next forward pass, by ``result``
        and on detach. Deferring it past the forward call means the model's output is no longer
        held while the lens computes its ``[batch, pos, d_vocab]`` log-probs.
        """
        ctx, self._unfinished = self._unfinished, None
        if ctx is None:
            return
        self._finishing = True
        try:
            with torch.no_grad():  # it may run outside the user's no_grad block: never build a graph
                for probe in self.probes:
                    pieces = self._pieces[probe.name]
                    pieces[-1] = probe.finish_batch(pieces[-1], ctx)
        finally:
            self._finishing = False

    def _make_hook(self, key: tuple[str, int | None], probes: list[Probe]) -> Any:
        site, layer = key

        def hook(tensor: Tensor, hook: Any = None) -> None:
            if threading.get_ident() != self._thread or self._finishing:
                return None  # another thread's forward pass, or our own deferred lens work
            ctx = self._ctx
            if ctx is None:  # a pass that did not go through model(...): we cannot read its inputs
                raise SessionError(
                    f"a forward pass reached {site!r} inside `tp.attach` without going through "
                    "model(...) (model.run_with_cache / run_with_hooks / forward() on this model "
                    "type, or a submodule called directly), so tlprobes cannot capture it. Call "
                    "model(tokens) inside the session, or detach the probes first"
                )
            if tensor.dim() and tensor.shape[0] != ctx.tokens.shape[0]:
                raise SessionError(
                    f"the activation at {site!r} has batch {tensor.shape[0]} but this pass has "
                    f"{ctx.tokens.shape[0]} prompts: another thread ran the model during the pass. "
                    "TransformerLens models are not thread-safe (the bridge's own outputs are wrong "
                    "then): run one forward pass at a time on a model, or one model per thread"
                )
            with torch.no_grad():  # probes write into buffers: never part of the user's graph
                for probe in probes:
                    probe.on_activation(site, layer, tensor, self._scratch[probe.name], ctx)
            return None

        return hook

    # ---------------------------------------------------------------- per forward pass
    def _pre_forward(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if threading.get_ident() != self._thread:
            return
        if self._in_forward and _model_calls_on_stack(self.model) < 2:
            # a stale flag: the last pass died with a BaseException (KeyboardInterrupt), which
            # torch's always_call hooks do not see; this pass is not nested
            self._in_forward = False
        if self._in_forward:
            raise SessionError(
                "a forward pass started inside another one (e.g. a hook that calls the model) while "
                "tlprobes is attached; nested passes cannot be captured. Run them one after another"
            )
        self._ctx = None
        self.finish()
        self._in_forward = True
        for flag in ("start_at_layer", "stop_at_layer"):
            if kwargs.get(flag) is not None:
                raise InputError(
                    f"tlprobes captures whole forward passes; got {flag}={kwargs[flag]!r}. Run the "
                    "full model inside the session, or detach the probes for partial passes"
                )
        inp = args[0] if args else kwargs.get("input", kwargs.get("tokens"))
        tokens, mask, prompts = _tokens.read_model_input(self.adapter, inp, kwargs)
        ctx = BatchContext(
            self.adapter,
            tokens,
            mask,
            store_device=self.device,
            store_dtype=self.dtype,
            prompts=prompts or self._call_prompts,
        )
        with torch.no_grad():
            scratch = {p.name: p.new_batch(ctx) for p in self.probes}
        for probe in self.probes:  # resolve selectors now: a missing target fails before the pass
            spec = getattr(probe, "positions", None)
            if spec is not None:
                ctx.positions(spec)
        self._scratch = scratch
        self._ctx = ctx

    def _end_forward(self, module: Any, args: Any, output: Any) -> None:
        """Runs after every pass, also one that raised: the next pass starts clean."""
        if threading.get_ident() == self._thread:
            self._in_forward = False
            self._ctx = None

    def _post_forward(self, module: Any, args: Any, output: Any) -> None:
        if threading.get_ident() != self._thread:
            return
        ctx = self._ctx
        if ctx is None:
            return
        self._ctx = None
        with torch.no_grad():
            pieces = {p.name: p.end_batch(self._scratch[p.name], ctx) for p in self.probes}
        for name, piece in pieces.items():
            self._pieces[name].append(piece)
        self._inputs.append(
            Inputs(
                tokens=ctx.tokens,
                attention_mask=ctx.mask,
                prompts=ctx.prompts,
                decode=_tokens.decoder(self.adapter),
            )
        )
        self._scratch = {}
        self._unfinished = ctx

    # ---------------------------------------------------------------- results
    @property
    def n_batches(self) -> int:
        return len(self._inputs)

    @property
    def result(self) -> Result:
        """Every completed forward pass so far, merged along the batch axis."""
        self.finish()
        if not self._inputs:
            raise SessionError(
                "no forward pass completed while the probes were attached; call the model inside "
                "the `with tp.attach(...)` block"
            )
        inputs = Inputs.concat(self._inputs, self.adapter.pad_token_id())
        captures = {}
        self._finishing = True  # finalize may call model parts (ln_final ...): not a forward pass
        try:
            for probe in self.probes:
                piece = probe.merge(self._pieces[probe.name])
                captures[probe.name] = probe.finalize(piece, inputs, self.adapter.meta)
        finally:
            self._finishing = False
        settings = {
            "probes": [repr(p) for p in self.probes],
            "capture_device": str(self.device),
            "capture_dtype": str(self.dtype or self.adapter.meta.dtype),
            "attention": self._attn.name,
        }
        return Result(captures, inputs, self.adapter.meta, settings)


def _check_probes(probes: Sequence[Any]) -> tuple[Probe, ...]:
    if not probes:
        raise ArgumentError("attach needs at least one probe, e.g. tp.Residual()")
    out: list[Probe] = []
    names: set[str] = set()
    for p in probes:
        if isinstance(p, type) and issubclass(p, Probe):
            raise ArgumentError(f"got the class {p.__name__}; pass an instance: {p.__name__}()")
        if not isinstance(p, Probe):
            raise ArgumentError(
                f"{p!r} is not a probe; valid: tp.Residual, tp.Attention, tp.Components, "
                "tp.LogitLens, tp.Steps, tp.ResidualMean, tp.Activation (instances)"
            )
        if p.name in names:
            raise InputError(
                f"two probes are named {p.name!r}; give one another name, e.g. name='{p.name}2'"
            )
        names.add(p.name)
        out.append(p)
    return tuple(out)


def attach(
    model: Any,
    *probes: Any,
    device: torch.device | str | None = "cpu",
    dtype: torch.dtype | str | None = None,
) -> Session:
    """Attach probes to a TransformerLens model; use as a context manager.

    Every forward call inside the block is captured (one pass captures all probes); several calls
    append along the batch axis. Captures are moved to ``device`` (CPU by default; ``None`` keeps
    them where the model is) and ``dtype`` as they arrive.

    Example::

        >>> with tp.attach(model, tp.Residual(), tp.LogitLens(top_k=5)) as session:  # doctest: +SKIP
        ...     model(tokens, attention_mask=mask)
        >>> session.result.logit_lens.top_ids.shape                                  # doctest: +SKIP
    """
    return Session(model, probes, device=device, dtype=dtype)


def _model_calls_on_stack(model: Any) -> int:
    """How many calls of ``model`` (``nn.Module._call_impl`` frames) the current thread is inside."""
    n = 0
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_call_impl" and frame.f_locals.get("self") is model:
            n += 1
        frame = frame.f_back
    return n
