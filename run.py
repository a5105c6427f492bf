#!/usr/bin/env python3
"""The command line of the Stripe App backend. `python run.py --help` lists the commands."""

from __future__ import annotations

import sys

from cli.main import main

if __name__ == "__main__":
    sys.exit(main())
