"""`python -m swimthor`: the same command line as the `swimthor` script."""

import sys

from swimthor.cli import main

if __name__ == "__main__":
    sys.exit(main())
