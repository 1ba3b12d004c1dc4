"""How the shipped default models were made: the grammar corpus and the trainer.

Not imported by :mod:`tlprobes` or :mod:`tlprobes.models`: only ``scripts/train_default.py`` and the
tests use it, so importing the package never loads ~1,300 lines of grammar and training code::

    >>> from tlprobes.models.training.corpus import prompt_sets
    >>> sorted(prompt_sets(0))[:2]
    ['general', 'her_sentences']

* :mod:`tlprobes.models.training.corpus`: the seeded English grammar with gold tags, the corpus
  split and the prompt sets written to ``probes/prompts/``.
* :mod:`tlprobes.models.training.train`: the BPE tokenizer and GPT-2 trainer
  (``TrainConfig``, ``train_default``, ``write_model_card``).
"""
