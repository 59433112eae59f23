"""`python -m edgernn` is the `edgernn` command."""

import sys

from edgernn.cli import main

if __name__ == "__main__":
    sys.exit(main())
