"""`python -m ichdemo ...`: see ichdemo/cli.py."""

import sys

from ichdemo.cli import main

sys.exit(main())
