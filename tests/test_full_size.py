"""A full-size Zamba2-VL-1.2B checkpoint of random bf16 weights: memory-bounded load and one image prompt via the CLI."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from zamba2vl.config import vl_preset
from zamba2vl.testing import make_tiny_checkpoint

RUN = """
import resource, sys
from zamba2vl.cli import main
rc = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(rc)
"""


def test_full_size_1p2b_loads_within_1p5x_its_files_and_answers_through_the_cli(tmp_path):
    import torch

    folder = make_tiny_checkpoint(tmp_path / "z1.2b", config=vl_preset("1.2b"), dtype=torch.bfloat16,
                                  max_shard_bytes=1024**3)
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) >= 4 and (folder / "model.safetensors.index.json").is_file()
    file_bytes = sum(f.stat().st_size for f in shards)
    assert file_bytes > 3.7e9  # 1.88B parameters in bf16
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    proc = subprocess.run(
        [sys.executable, "-c", RUN, "generate", "--model", str(folder), "--image", str(tmp_path / "x.png"),
         "--prompt", "What is in the picture?", "--max-new-tokens", "3", "--dtype", "bfloat16", "--max-pixels", str(28 * 28 * 16), "--verbose"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = int(proc.stderr.split("MAXRSS_KB")[1].split()[0]) * 1024
    assert peak < 1.5 * file_bytes, (peak, file_bytes)
    assert "time to first token" in proc.stderr and "loaded 1883.1M parameters" in proc.stderr
    assert json.loads((folder / "config.json").read_text())["text_config"]["hidden_size"] == 2048
