"""One module per study; each defines ``STUDY`` with ``compute`` (model -> tables) and ``render``."""
