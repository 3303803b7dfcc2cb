"""``python -m peo.testing.chaos`` (see :mod:`peo.testing.chaos`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
