"""``attach``: register probes as TransformerLens hooks for the forward passes inside a ``with`` block.

::

    >>> import tlprobes as tp
    >>> with tp.attach(model, tp.Residual(), tp.Attention(layers=[0])) as session:   # doctest: +SKIP
    ...     model(tokens, attention_mask=mask)
    >>> session.result.residual.resid.shape                                          # doctest: +SKIP

One hook is registered per ``(site, layer)`` that any probe needs, through the HookPoint's own
``add_hook`` (which returns a handle), plus a forward pre-hook and post-hook on the model that read
the tokens and ``attention_mask`` of each call. On exit, exactly those handles are removed, in a
``finally`` block: a forward pass that raises leaves no tlprobes hook behind, and hooks that were
there before (the user's, permanent or not) are never removed or reordered.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._adapter import Adapter, adapter_for
from ._attn_impl import PATTERN_SITES, Switch, use_fastest
from ._errors import ArgumentError, InputError, SessionError, choices
from ._result import Inputs, Result
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
        self._handles: list[tuple[Any, Any]] = []  # (hook point or None, handle)
        self._ctx: BatchContext | None = None
        self._scratch: dict[str, dict[str, Any]] = {}
        self._pieces: dict[str, list[dict[str, Any]]] = {p.name: [] for p in self.probes}
        self._inputs: list[Inputs] = []
        self._unfinished: BatchContext | None = None  # the last batch, before finish_batch
        self.next_prompts: list[str] | None = None  # set by the runner for clearer errors
        self.attached = False
        self._entered = False
        self._thread: int | None = None  # the thread that attached; others' forwards are ignored
        self._in_forward = False
        self._finishing = False
        self._attn = Switch([])  # the attention kernel of the attached passes (_attn_impl)

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
            self._handles.append(
                (None, self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
            )
            for key, point in self._points.items():
                fn = self._make_hook(key, self._routes[key])
                if hasattr(point, "add_hook"):
                    handle = point.add_hook(fn, dir="fwd")
                    if handle is None:  # TL 2.x/3.x return nothing; the handle was appended last
                        handle = point.fwd_hooks[-1]
                    self._handles.append((point, handle))
                else:  # a plain module hook (logits on TL 2.18)
                    self._handles.append((None, point.add(fn)))
            self._handles.append((None, self.model.register_forward_hook(self._post_forward)))
            self._handles.append(
                (None, self.model.register_forward_hook(self._end_forward, always_call=True))
            )
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
        errors: list[BaseException] = []
        for point, handle in reversed(handles):
            try:
                if point is None:
                    handle.remove()
                else:
                    handle.hook.remove()
                    point.fwd_hooks = [h for h in point.fwd_hooks if h is not handle]
            except BaseException as err:  # keep removing the rest
                errors.append(err)
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
        tokens, mask, prompts = self._read_input(inp, kwargs)
        ctx = BatchContext(
            self.adapter,
            tokens,
            mask,
            store_device=self.device,
            store_dtype=self.dtype,
            prompts=prompts or self.next_prompts,
        )
        with torch.no_grad():
            scratch = {p.name: p.new_batch(ctx) for p in self.probes}
        for probe in self.probes:  # resolve selectors now: a missing target fails before the pass
            spec = getattr(probe, "positions", None)
            if spec is not None:
                ctx.positions(spec)
        self._scratch = scratch
        self._ctx = ctx

    def _read_input(self, inp: Any, kwargs: dict[str, Any]) -> tuple[Tensor, Tensor, list[str] | None]:
        mask = kwargs.get("attention_mask")
        if isinstance(inp, Tensor):
            if inp.is_floating_point():
                raise InputError(
                    "tlprobes needs token ids (a LongTensor [batch, pos]) or strings as model input, "
                    f"got a float tensor of shape {tuple(inp.shape)}"
                )
            tokens = inp if inp.dim() == 2 else inp.unsqueeze(0)
            if mask is None:
                mask = torch.ones_like(tokens, dtype=torch.bool)
            return tokens, mask.bool(), None
        if isinstance(inp, str):
            inp = [inp]
        if isinstance(inp, list) and inp and all(isinstance(s, str) for s in inp):
            prepend_bos = kwargs.get("prepend_bos")
            side = kwargs.get("padding_side") or getattr(self.adapter.tokenizer, "padding_side", "right")
            bos_kw = {} if prepend_bos is None else {"prepend_bos": prepend_bos}
            tokens = self.model.to_tokens(inp, padding_side=side, move_to_device=False, **bos_kw)
            if mask is None:
                lengths = [len(self.adapter.encode(s, prepend_bos=prepend_bos)) for s in inp]
                seq = tokens.shape[1]
                ar = torch.arange(seq)
                mask = torch.stack(
                    [(ar >= seq - n) if side == "left" else (ar < n) for n in lengths]
                )
            return tokens, mask.bool(), list(inp)
        raise InputError(
            f"cannot read model input of type {type(inp).__name__}; valid: a string, a list of "
            "strings, or token ids (LongTensor [batch, pos])"
        )

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
                decode=_decoder(self.adapter),
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


def _decoder(adapter: Adapter) -> Any:
    tok = adapter.tokenizer
    if tok is None:
        return None

    def decode(ids: list[int]) -> list[str]:
        return tok.batch_decode([[i] for i in ids])

    return decode


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
