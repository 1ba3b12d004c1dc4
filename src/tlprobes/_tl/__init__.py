"""How tlprobes talks to TransformerLens: the one package that imports it.

* :mod:`~tlprobes._tl.adapter`: one model's kind, version, mode, sites and hook names, weights
  (``W_E``, ``W_U``), final norm and readout, vocabulary and name (:func:`adapter_for`).
* :mod:`~tlprobes._tl.hooks`: adding a hook returns a handle on TL 2, 3 and 4; removing it
  undoes exactly that hook.
* :mod:`~tlprobes._tl.tokens`: prompts to token ids, checks, padding and attention masks.
* :mod:`~tlprobes._tl.loading`: building models from local folders, GGUF files and TL names;
  the installed TL version.
* :mod:`~tlprobes._tl.attn_impl`: the SDPA attention kernel for runs that need no pattern.
* :mod:`~tlprobes._tl.interop`: TransformerLens ``ActivationCache`` objects as captures.

Nothing outside this package imports ``transformer_lens`` or ``transformers`` or touches a TL
model's attributes (``tests/test_layout.py``)::

    >>> from tlprobes._tl.adapter import adapter_for
    >>> adapter_for(tp.load_model()).meta.n_layers
    4
"""
