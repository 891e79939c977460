"""`zamba2vl demo`: the offline demo on the model that ships with the project."""

from __future__ import annotations

import argparse
from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).parent / "assets" / "nano"


def run_demo(args: argparse.Namespace) -> int:
    if not (DEMO_MODEL_DIR / "config.json").is_file():
        print(
            "zamba2vl demo: no demo model ships with this version yet.\n"
            "The small Zamba2-VL trained by the project's own pipeline lands with the training issue; until then,\n"
            "load a real checkpoint from Python: zamba2vl.Zamba2LM.from_pretrained('<folder or Hub id>')."
        )
        return 0
    raise NotImplementedError("the demo model is present but the demo runner is not wired yet")
