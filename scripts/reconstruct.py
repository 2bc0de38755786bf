#!/usr/bin/env python
"""Entry script for reconstruction: `cascadev encode|decode|recon|upscale|interpolate ...`, and
`cascadev recon ...` when no command is named (``scripts/reconstruct.py clip.mp4 -o out``)."""

import sys

from cascadev.cli import main

COMMANDS = ("encode", "decode", "recon", "upscale", "interpolate")

if __name__ == "__main__":
    args = sys.argv[1:]
    if args in (["-h"], ["--help"]):  # this script's own usage, then recon's (what it runs by default)
        print(f"usage: scripts/reconstruct.py [{'|'.join(COMMANDS)}] ...  (no command: recon)\n{__doc__}")
    sys.exit(main(args if args[:1] and args[0] in COMMANDS else ["recon", *args]))
