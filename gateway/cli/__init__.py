"""The `gateway` command line. Errors are one line on stderr and a non-zero exit.

`root` holds the root command and `main`; each command group is its own module
(`keys`, `models`, `privacy`, `audit`, `policy`) and shares only `options`, never
the root, so the modules import in one direction.
"""

from gateway.cli.root import main

__all__ = ["main"]
