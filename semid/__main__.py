"""`python -m semid`: the `semid` command, for environments whose scripts folder is not on PATH."""

import sys

from semid.cli.main import main

sys.exit(main())
