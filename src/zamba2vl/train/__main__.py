"""``python -m zamba2vl.train --config stage.yaml`` (what torchrun starts: ``torchrun ... -m zamba2vl.train``)."""

import sys

from zamba2vl.train.cli import main

sys.exit(main())
