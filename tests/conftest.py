"""Root test configuration. Shared helpers live in zamba_testkit.py (this folder is on sys.path for the tests)."""

import torch

torch.set_num_threads(2)
