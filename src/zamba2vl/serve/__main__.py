"""``python -m zamba2vl.serve --model M``: the same as ``zamba2vl serve``."""

import sys

from zamba2vl.serve.cli import main

sys.exit(main())
