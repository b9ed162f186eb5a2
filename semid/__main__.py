"""`python -m semid`: the `semid` command, for environments whose scripts folder is not on PATH."""

import sys

from semid.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
