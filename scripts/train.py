#!/usr/bin/env python
"""Entry script for training (what `accelerate launch` runs): the same as `cascadev train ...`."""

import sys

from cascadev.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
