"""scripts/probe_image_tokens.py: its labels, its per-stage features (in reading order, whatever the window order)
and its probe."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import probe_image_tokens as P  # noqa: E402

from zamba2vl import load  # noqa: E402
from zamba2vl.config import Zamba2VLConfig  # noqa: E402
from zamba2vl.model import Zamba2VL  # noqa: E402
from zamba2vl.train.synthetic import SyntheticExample  # noqa: E402


def _example(objects, size=112):
    return SyntheticExample("counting", Image.new("RGB", (size, size)), "q", "1", {"objects": objects}, 0, 0)


def test_labels_mark_every_cell_an_object_touches_and_the_cell_of_its_centre():
    ex = _example([{"shape": "square", "color": "red", "box": [20, 20, 40, 36]},  # cells 0, 1, 4, 5; centre (30, 28)
                   {"shape": "triangle", "color": "blue", "box": [84, 90, 100, 112]}])  # cell 15 only
    colour, shape = P.token_labels(ex, 4, 4)
    red, blue = P.COLOURS.index("red"), P.COLOURS.index("blue")
    assert np.flatnonzero(colour[:, red]).tolist() == [0, 1, 4, 5]
    assert np.flatnonzero(colour[:, blue]).tolist() == [15]
    assert colour.sum() == 5
    assert shape.tolist() == [-1] * 5 + [P.SHAPES.index("square")] + [-1] * 9 + [P.SHAPES.index("triangle")]


def _square_at(row, col):
    a = np.full((112, 112, 3), 235, np.uint8)
    a[row * 28 + 6: row * 28 + 22, col * 28 + 6: col * 28 + 22] = (220, 30, 30)
    return Image.fromarray(a)


def test_features_of_the_shipped_model_are_per_cell_and_the_merger_is_what_the_model_reads():
    pipe = load("nano")
    blank = P.stage_features(pipe.model, pipe.processor, Image.new("RGB", (112, 112), (235, 235, 235)))
    one = P.stage_features(pipe.model, pipe.processor, _square_at(2, 1))  # cell 9
    assert list(one) == ["pixels", "patch embedding"] + [f"vision block {k}" for k in range(4)] + \
        ["merger (language model input)"]
    assert all(v.shape[0] == 16 for v in one.values())
    changed = (one["pixels"] - blank["pixels"]).abs().amax(1)
    assert torch.nonzero(changed).flatten().tolist() == [9]  # the square's pixels are in token 9's patches only
    out = pipe.processor.image_processor([_square_at(2, 1)])
    with torch.no_grad():
        merged = pipe.model.get_image_features(out["pixel_values"], out["image_grid_thw"]).float()
    torch.testing.assert_close(one["merger (language model input)"], merged, rtol=0, atol=0)
    diff = (one["merger (language model input)"] - blank["merger (language model input)"]).norm(dim=1)
    assert int(diff.argmax()) == 9


def test_block_features_come_back_in_reading_order_from_window_order():
    # Windows of 56 pixels (2x2 merged tokens) and no full-attention block: a block's output can change only in the
    # window of the cell that changed, so a mix-up of window and reading order shows.
    pipe = load("nano")
    cfg = json.loads((Path(P.__file__).resolve().parents[1] / "src/zamba2vl/assets/nano/config.json").read_text())
    cfg["vision_config"].update(window_size=56, fullatt_block_indexes=[])
    torch.manual_seed(0)
    model = Zamba2VL(Zamba2VLConfig.from_dict(cfg)).eval()
    blank = P.stage_features(model, pipe.processor, Image.new("RGB", (112, 112), (235, 235, 235)))
    one = P.stage_features(model, pipe.processor, _square_at(0, 3))  # cell 3: window {2, 3, 6, 7}
    for k in range(4):
        changed = (one[f"vision block {k}"] - blank[f"vision block {k}"]).abs().amax(1) > 0
        assert set(torch.nonzero(changed).flatten().tolist()) <= {2, 3, 6, 7}, k
        assert changed[3]


def test_probe_finds_a_planted_feature_and_not_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 32, generator=g)
    planted = (x[:, 5] > -0.5).long() + (x[:, 9] > 0.5).long()  # 3 classes from two of the 32 features
    noise = torch.randint(0, 3, (3000,), generator=g)
    parts = torch.arange(3000).split([1800, 450, 750])
    assert P.probe(x, planted, *parts, False, 400, 0) > 0.8  # 0.856 (majority class 0.59): a lower bound, it overfits
    assert P.probe(x, noise, *parts, False, 400, 0) < 0.42  # chance 1/3, 750 rows
    assert P.effective_rank(torch.randn(500, 8, generator=g)) == pytest.approx(8, abs=0.5)
    assert P.effective_rank(torch.randn(500, 1, generator=g) * torch.ones(1, 8)) == pytest.approx(1, abs=0.01)


def test_run_probes_the_chosen_stages_on_the_shipped_model():
    result = P.run("nano", images=24, seed=3, image_size=112, steps=50, only="pixels,merger")
    stages = {s["stage"]: s for s in result["stages"]}
    assert list(stages) == ["pixels", "merger (language model input)"]
    assert stages["pixels"]["dims"] == 2352 and stages["merger (language model input)"]["dims"] == 192
    # the shipped merger's output (trained with the reconstruction objective since session 10) varies along ~15
    # directions (14.7 on 1,200 images for its first run; session 8's model, without it: 5.6), the pixels along dozens
    assert 10 < stages["merger (language model input)"]["effective_rank"] < 25 < stages["pixels"]["effective_rank"]
    assert all(0 <= s[k] <= 1 for s in stages.values() for k in ("colour_set", "shape"))
    with pytest.raises(SystemExit, match="resized"):
        P.run("nano", images=1, seed=3, image_size=100, steps=1)
