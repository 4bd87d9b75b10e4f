"""``python -m sagakit_chaos``: one chaos run from the command line (``--help``)."""

import sys

from ._run import main

sys.exit(main())
