"""`python -m gateway.cli`: the same as the `gateway` script."""

import sys

from gateway.cli.root import main

if __name__ == "__main__":
    sys.exit(main())
