"""`python -m zamba2vl.eval ...` (also under torchrun: `torchrun --nproc-per-node 2 -m zamba2vl.eval ...`)."""

import sys

from zamba2vl.eval.cli import main

sys.exit(main())
