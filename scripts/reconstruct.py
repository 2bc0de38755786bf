#!/usr/bin/env python
"""Entry script for reconstruction: the same as `cascadev encode|decode|recon ...`."""

import sys

from cascadev.cli import main

if __name__ == "__main__":
    sys.exit(
        main(
            sys.argv[1:]
            if len(sys.argv) > 1 and sys.argv[1] in ("encode", "decode", "recon")
            else ["recon", *sys.argv[1:]]
        )
    )
