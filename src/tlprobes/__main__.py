"""``python -m tlprobes``: the ``tlprobes`` command (also under ``torchrun ... -m tlprobes run``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
