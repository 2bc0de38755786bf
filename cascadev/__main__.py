"""``python -m cascadev`` (and ``accelerate launch -m cascadev``): the ``cascadev`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
