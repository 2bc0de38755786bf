#!/usr/bin/env python
"""Entry script for evaluation: the same as `cascadev eval ...` (PSNR/SSIM/LPIPS/VBench, with a report)."""

import sys

from cascadev.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(args if args[:1] == ["eval"] else ["eval", *args]))
