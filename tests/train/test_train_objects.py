"""The auxiliary objects objective (train/objects.py): its targets, its loss, and its place in the trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from trainkit import processor, stage_config, tiny_vl_config, train_in_process

from zamba2vl.errors import ConfigError, InputError
from zamba2vl.train import synthetic
from zamba2vl.train.config import config_from_dict
from zamba2vl.train.encode import ConversationEncoder, collate
from zamba2vl.train.loss import CausalLMLoss
from zamba2vl.train.objects import MATCH, ObjectMap, QueryMatch, Spelling, object_targets, target_width
from zamba2vl.train.sources import SyntheticSource

K = len(synthetic.KINDS)


def shapes_data() -> dict:
    """The data section of the small runs here: synthetic counting and grounding (every image annotated)."""
    return {"sources": [{"type": "synthetic", "image_size": 56, "seed": 5, "tasks": ["counting", "grounding"]}]}


def annotated_run(out, steps: int, **sections) -> list[dict]:
    """Train `steps` steps of 4 samples (loss_per: sample) on shapes_data with a checkpoint at the end, plus
    `sections`; the rows of its loss.jsonl."""
    train_in_process(stage_config(out, optim={"max_steps": steps, "loss_per": "sample"},
                                  batch={"global_batch_size": 4, "micro_batch_size": 4}, data=shapes_data(),
                                  checkpoint={"every": steps}, **sections))
    return [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]


def first_layer_states(model, ids, pixels, grid) -> torch.Tensor:
    """The language model's hidden states [b, L, h] after its first layer alone (no final norm), computed by
    running the stack cut to that layer (restored after): what the match and spell heads at layer 1 must read."""
    lm = model.language_model.model
    kept, norm = lm.layers, lm.final_layernorm
    lm.layers, lm.final_layernorm = kept[:1], torch.nn.Identity()
    try:
        embeds = model.embed_inputs(ids, pixels, grid, model.get_image_features(pixels, grid))
        return lm(embeds, None, None, torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1))
    finally:
        lm.layers, lm.final_layernorm = kept, norm


def test_targets_mark_the_cell_of_each_centre_with_its_kind_and_box():
    # A 112x112 image: 8x8 patches, 4x4 merged tokens of 28 pixels. Object 0 (kind 5) spans x 30-50, y 2-20:
    # centre (40, 11), cell (row 0, col 1) = token 1. Object 1 (kind 7) centre (84, 98): cell (3, 3) = token 15.
    annotation = {"size": [112, 112], "kinds": [5, 7], "boxes": [[30, 2, 50, 20], [70, 90, 98, 106]]}
    t = object_targets(annotation, (1, 8, 8), K)
    assert t.shape == (16, target_width(K)) == (16, K + 8)
    assert t[:, -1].tolist() == [1.0] * 16  # every token of an annotated image counts
    assert torch.nonzero(t[:, :K]).tolist() == [[1, 5], [15, 7]]
    assert t[:, K + 4].tolist() == [1.0 if i in (1, 15) else 0.0 for i in range(16)]
    assert torch.allclose(t[1, K:K + 4], torch.tensor([30, 2, 50, 20]) / 28)
    assert torch.allclose(t[15, K:K + 4], torch.tensor([70, 90, 98, 106]) / 28)
    assert t[:, K + 5].tolist() == [5.0 if i == 1 else 7.0 if i == 15 else K for i in range(16)]  # K: nothing
    # The annotation is in the image's own pixels: the same objects on a 224-pixel image the processor
    # shrank to 112 (grid 8x8) land in the same cells, with boxes in the resized image's cells.
    big = {"size": [224, 224], "kinds": [5, 7], "boxes": [[2 * v for v in b] for b in annotation["boxes"]]}
    assert torch.equal(object_targets(big, (1, 8, 8), K), t)
    # Without "match", the match column is -1 (unknown) everywhere.
    assert t[:, MATCH].tolist() == [-1.0] * 16
    # No annotation: zeros, flag 0, match unknown.
    empty = torch.zeros(6, K + 8)
    empty[:, MATCH] = -1
    assert torch.equal(object_targets(None, (1, 4, 6), K), empty)


def test_two_centres_in_one_cell_keep_both_kinds_and_the_larger_box():
    annotation = {"size": [56, 56], "kinds": [0, 3], "boxes": [[2, 2, 10, 10], [4, 12, 24, 26]]}  # both in cell 0
    t = object_targets(annotation, (1, 4, 4), K)
    assert torch.nonzero(t[:, :K]).tolist() == [[0, 0], [0, 3]]
    assert torch.allclose(t[0, K:K + 4], torch.tensor([4, 12, 24, 26]) / 28)
    assert t[0, K + 5] == 3  # the softmax's label: the larger object's kind


def test_a_bad_annotation_is_an_input_error():
    with pytest.raises(InputError, match="one kind"):
        object_targets({"size": [56, 56], "kinds": [K], "boxes": [[0, 0, 5, 5]]}, (1, 4, 4), K)
    with pytest.raises(InputError, match="size"):
        object_targets({"kinds": [0], "boxes": [[0, 0, 5, 5]]}, (1, 4, 4), K)


def test_loss_is_each_annotated_images_mean_token_loss_summed():
    torch.manual_seed(0)
    head = ObjectMap(hidden_size=16, n_kinds=K, box_weight=0.5, seed=2)
    grids = torch.tensor([[1, 4, 4], [1, 2, 4], [1, 4, 2]])  # 4, 2 and 2 merged tokens
    annotated = [{"size": [56, 56], "kinds": [3], "boxes": [[30, 4, 50, 22]]}, None,
                 {"size": [28, 56], "kinds": [1, 9], "boxes": [[2, 2, 20, 20], [4, 30, 24, 50]]}]
    targets = torch.cat([object_targets(a, g, K) for a, g in zip(annotated, grids.tolist())])
    feats = torch.randn(8, 16)
    loss, images = head(feats, targets, grids, unit=4)
    assert images == 2  # the unannotated image adds nothing and is not counted

    def by_hand(f, t):  # one image: mean over its tokens of (BCE over kinds + 0.5 x L1 of a centre's box)
        out = head.proj(f)
        total = 0.0
        for i in range(len(f)):
            bce = sum(F.binary_cross_entropy_with_logits(out[i, k], t[i, k]) for k in range(K))
            l1 = sum(abs(out[i, K + j] - t[i, K + j]) for j in range(4)) if t[i, K + 4] else 0.0
            total = total + bce + 0.5 * l1
        return total / len(f)

    want = by_hand(feats[:4], targets[:4]) + by_hand(feats[6:], targets[6:])
    assert torch.allclose(loss, want, atol=1e-5)
    assert torch.equal(ObjectMap(16, K, seed=2).proj.weight, head.proj.weight)
    assert not torch.equal(ObjectMap(16, K, seed=3).proj.weight, head.proj.weight)

    # kind_loss="softmax": K + 1 classes (the last: nothing here), cross-entropy towards the cell's kind.
    soft = ObjectMap(hidden_size=16, n_kinds=K, box_weight=0.5, seed=2, kind_loss="softmax")
    assert soft.proj.out_features == K + 1 + 4
    loss, images = soft(feats, targets, grids, unit=4)

    def by_hand_softmax(f, t):
        out = soft.proj(f)
        total = 0.0
        for i in range(len(f)):
            label = int(t[i, K + 5])
            ce = -torch.log_softmax(out[i, :K + 1], -1)[label]
            l1 = sum(abs(out[i, K + 1 + j] - t[i, K + j]) for j in range(4)) if t[i, K + 4] else 0.0
            total = total + ce + 0.5 * l1
        return total / len(f)

    want = by_hand_softmax(feats[:4], targets[:4]) + by_hand_softmax(feats[6:], targets[6:])
    assert images == 2 and torch.allclose(loss, want, atol=1e-5)
    with pytest.raises(ValueError, match="kind_loss"):
        ObjectMap(16, K, kind_loss="focal")


def test_synthetic_counting_and_grounding_carry_annotations_in_token_order():
    # The encoder's targets follow the merged tokens' order: the token marked with an object's kind holds pixels of
    # exactly that object's colour (read back from pixel_values, the tower's input).
    proc = processor()
    encoder = ConversationEncoder(proc, object_kinds=K)
    source = SyntheticSource(tasks=["counting", "bar_chart", "grounding"], seed=3, image_size=112,
                             grounding_format="box")
    mean = torch.tensor(proc.image_processor.image_mean)[None, :, None, None]
    std = torch.tensor(proc.image_processor.image_std)[None, :, None, None]
    seen = {"counting": 0, "bar_chart": 0, "grounding": 0}
    for i in range(12):
        messages, where = source.messages(i)
        task = where.split(":")[1].split("-")[0]
        seen[task] += 1
        example = encoder(messages)
        targets = example.objects
        assert targets.shape == (16, K + 8)
        if task == "bar_chart":
            assert "objects" not in messages[0]["content"][0] and not targets[:, :MATCH].any()
            assert not targets[:, -1].any() and (targets[:, MATCH] == -1).all()
            continue
        annotation = messages[0]["content"][0]["objects"]
        assert targets[:, -1].all() and targets[:, :K].sum() == len(annotation["kinds"])
        pixels = example.pixel_values.view(-1, 3, 14, 14) * std + mean
        for token, kind in torch.nonzero(targets[:, :K]).tolist():
            colour = torch.tensor(synthetic.COLORS[synthetic.KINDS[kind][1]]) / 255
            own = pixels[4 * token:4 * token + 4]
            assert ((own - colour[None, :, None, None]).abs().amax(1) < 0.02).sum() >= 20, (where, token, kind)
    assert min(seen.values()) > 0
    batch = collate([encoder(source.messages(i)[0]) for i in range(3)])
    assert batch.objects.shape == (48, K + 8)


def test_banner_reading_letters_land_on_their_tokens_left_to_right():
    # reading_size (224, 28): one row of 8 merged tokens; each letter's kind is on the token whose 28-pixel
    # column holds the letter's centre, so the marked tokens read the word from left to right.
    proc = processor()
    encoder = ConversationEncoder(proc, object_kinds=K + len(synthetic.LETTERS))
    source = SyntheticSource(tasks=["reading", "counting"], seed=3, image_size=112, letters=True,
                             reading_size=[224, 28])
    n_reading = 0
    for i in range(10):
        messages, where = source.messages(i)
        example = encoder(messages)
        if not where.startswith("synthetic:reading"):
            assert example.image_grid_thw.tolist() == [[1, 8, 8]]
            continue
        n_reading += 1
        assert example.image_grid_thw.tolist() == [[1, 2, 16]] and example.objects.shape == (8, K + 26 + 8)
        annotation = messages[0]["content"][0]["objects"]
        word = "".join(synthetic.LETTERS[k - K] for k in annotation["kinds"])
        centres = [(b[0] + b[2]) / 2 for b in annotation["boxes"]]
        expected = sorted({(int(c // 28), ch) for c, ch in zip(centres, word)})
        marked = sorted((t, synthetic.LETTERS[k]) for t, k in torch.nonzero(example.objects[:, K:K + 26]).tolist())
        assert marked == expected, (word, marked)
        assert centres == sorted(centres)  # the letters' centres run left to right
    assert n_reading > 0


def test_objects_loss_trains_the_vision_side_only(tmp_path):
    from zamba2vl.train.build import random_model

    config = tiny_vl_config()
    model = random_model(config, seed=1)
    head = ObjectMap(config.text_config.hidden_size, K)
    loss_fn = CausalLMLoss(model, None, objects=head, objects_weight=2.0)
    grid = torch.tensor([[1, 4, 4]])
    pixels = torch.randn(16, 3 * 14 * 14)
    targets = object_targets({"size": [56, 56], "kinds": [4], "boxes": [[3, 3, 20, 20]]}, (1, 4, 4), K)
    ids = torch.tensor([[1] + [config.image_token_index] * 4 + [5, 6]])
    labels = torch.full_like(ids, -100)
    loss, count = loss_fn(ids, labels, pixels, grid, None, targets)
    error, images = head(model.get_image_features(pixels, grid), targets, grid, unit=4)
    assert count == 0 and images == 1 and torch.allclose(loss, 2.0 * error, atol=1e-5)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.vision_tower.merger.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.language_model.parameters())
    # Without targets (a text-only or unannotated batch) the head is not used.
    loss_fn.zero_grad()
    plain, _ = loss_fn(ids, labels, pixels, grid)
    assert plain.item() == 0.0


def test_bad_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="objects"):
        config_from_dict(stage_config(tmp_path / "a", objects={"weight": -1.0}))
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict(stage_config(tmp_path / "a", objects={"wieght": 1.0}))


def test_a_run_logs_the_objects_loss_and_keeps_the_head_in_the_trainer_state(tmp_path):
    out = tmp_path / "run"
    rows = annotated_run(out, 4, objects={"weight": 0.5})
    assert len(rows) == 4
    for r in rows:  # every image is annotated: loss = lm_loss + 0.5 x the mean objects loss per image
        assert r["objects_loss"] > 0 and "reconstruction_mse" not in r
        assert abs(r["loss"] - (r["lm_loss"] + 0.5 * r["objects_loss"])) < 1e-5
    assert rows[-1]["objects_loss"] < rows[0]["objects_loss"]
    state = torch.load(out / "checkpoints" / "step-000004" / "trainer_state.pt", weights_only=False)
    assert set(state["objects"]) == {"proj.weight", "proj.bias"}
    assert np.isfinite(rows[-1]["loss"])


def test_reading_letters_are_annotated_only_when_asked():
    # Each letter's box holds ink of that letter, all the word's ink lies in the letters' boxes, and their union
    # is the word's tight box (meta["box"]).
    for i in range(6):
        ex = synthetic.make_example("reading", 4, i, 112)
        assert synthetic.object_annotation(ex) is None
        a = synthetic.object_annotation(ex, letters=True)
        word = ex.meta["word"]
        assert a["kinds"] == [K + synthetic.LETTERS.index(ch) for ch in word] and len(a["boxes"]) == len(word)
        img = np.asarray(ex.image).astype(int)
        ink = np.abs(img - ex.meta["background"]).sum(-1) > np.abs(img - ex.meta["color"]).sum(-1)
        covered = np.zeros_like(ink)
        for x1, y1, x2, y2 in a["boxes"]:
            cell = (slice(int(np.floor(y1)), int(np.ceil(y2))), slice(int(np.floor(x1)), int(np.ceil(x2))))
            assert ink[cell].sum() >= 5, (word, x1, y1, x2, y2)
            covered[cell] = True
        assert not (ink & ~covered).any()
        boxes = np.array(a["boxes"])
        assert np.allclose([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()],
                           ex.meta["box"])
    counting = synthetic.make_example("counting", 4, 0, 112)
    assert synthetic.object_annotation(counting, letters=True) == synthetic.object_annotation(counting)


def test_a_run_with_letters_trains_a_head_over_shapes_colours_and_letters(tmp_path):
    out = tmp_path / "run"
    train_in_process(stage_config(out, optim={"max_steps": 2, "loss_per": "sample"},
                                  data={"sources": [{"type": "synthetic", "image_size": 56, "seed": 5,
                                                     "tasks": ["reading"]}]},
                                  checkpoint={"every": 2}, objects={"weight": 1.0, "letters": True}))
    rows = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert all(r["objects_loss"] > 0 for r in rows)
    state = torch.load(out / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=False)
    assert state["objects"]["proj.weight"].shape[0] == K + len(synthetic.LETTERS) + 4


def test_a_killed_run_with_the_objects_head_resumes_exactly(tmp_path):
    from trainkit import straight_and_resumed

    def config(name, every):
        return stage_config(tmp_path / name, optim={"max_steps": 5}, checkpoint={"every": every},
                            data=shapes_data(), objects={"weight": 0.5})

    a, b = straight_and_resumed(tmp_path, config)
    assert sorted(a) == sorted(b) == list(range(1, 6))
    assert [b[s] for s in range(1, 6)] == [a[s] for s in range(1, 6)]


def test_vision_stage_trains_tower_and_merger_from_the_auxiliary_losses_alone(tmp_path):
    from zamba2vl.model import Zamba2VL
    from zamba2vl.train.build import load_model

    out = tmp_path / "vision"
    config = stage_config(out, stage="vision", optim={"max_steps": 3, "loss_per": "sample"},
                          data={"sources": [{"type": "synthetic", "image_size": 56, "seed": 5,
                                             "tasks": ["counting", "bar_chart"]}]},
                          checkpoint={"every": 3}, objects={"weight": 1.0}, reconstruction={"weight": 0.5})
    train_in_process(config)
    rows = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:  # no language-model loss: what was minimised is the two auxiliary losses alone
        assert r["lm_loss"] == 0.0 and r["reconstruction_mse"] > 0 and r["loss"] > 0
    assert any(r["objects_loss"] > 0 for r in rows)  # (a step of bar charts only has no annotated image)
    before = load_model(config_from_dict(config).model).state_dict()
    after = Zamba2VL.from_pretrained(out / "checkpoints" / "step-000003").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("vision_tower.") for k in changed)  # the language model is untouched
    assert any(k.startswith("vision_tower.merger.") for k in changed)
    assert any(k.startswith("vision_tower.blocks.") for k in changed)


def test_vision_stage_loss_without_images_is_a_zero_gradient():
    # stage: vision skips the language model; a micro-batch without images still backpropagates (zeros), so every
    # process of a DDP run reduces the same parameters.
    from zamba2vl.train.build import random_model

    config = tiny_vl_config()
    model = random_model(config, seed=1)
    head = ObjectMap(config.text_config.hidden_size, K)
    loss_fn = CausalLMLoss(model, None, objects=head, objects_weight=1.0, language_model=False)
    ids = torch.tensor([[1, 5, 6, 7]])
    labels = torch.tensor([[-100, -100, 6, 7]])
    loss, count = loss_fn(ids, labels)
    assert loss.item() == 0.0 and count == 2 and loss.requires_grad
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in head.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in model.vision_tower.parameters())
    # With an annotated image only the auxiliary loss counts: no language-model term.
    grid = torch.tensor([[1, 4, 4]])
    pixels = torch.randn(16, 3 * 14 * 14)
    targets = object_targets({"size": [56, 56], "kinds": [4], "boxes": [[3, 3, 20, 20]]}, (1, 4, 4), K)
    ids = torch.tensor([[1] + [config.image_token_index] * 4 + [5, 6]])
    labels = torch.tensor([[-100] * 6 + [6]])
    loss, _ = loss_fn(ids, labels, pixels, grid, None, targets)
    error, _ = head(model.get_image_features(pixels, grid), targets, grid, unit=4)
    assert torch.allclose(loss, error, atol=1e-6) and loss_fn.last_parts["lm"].item() == 0.0


def test_vision_stage_settings_are_checked(tmp_path):
    base = dict(stage="vision", eval={"every": 0, "at_end": False})
    with pytest.raises(ConfigError, match="auxiliary objectives alone"):
        config_from_dict(stage_config(tmp_path, **base))
    with pytest.raises(ConfigError, match="eval"):
        config_from_dict(stage_config(tmp_path, stage="vision", objects={"weight": 1.0},
                                      eval={"every": 10, "at_end": False}))
    with pytest.raises(ConfigError, match="freeze.language_model"):
        config_from_dict(stage_config(tmp_path, **base, objects={"weight": 1.0},
                                      freeze={"language_model": False}))


def test_letter_slots_name_each_cells_letters_left_to_right():
    # A 112x28 banner: one row of 4 merged tokens. Letters (kinds K + index) centred at x 5, 20 (cell 0, given
    # right to left) and 40 (cell 1); cell 2 and 3 hold none. Slots: 26 = none; the shapes' columns stay empty.
    a, b, c = (K + synthetic.LETTERS.index(ch) for ch in "abc")
    annotation = {"size": [112, 28], "kinds": [b, a, c], "boxes": [[16, 4, 24, 20], [1, 4, 9, 20], [36, 4, 44, 20]]}
    t = object_targets(annotation, (1, 2, 8), K, letter_slots=3)
    assert t.shape == (4, target_width(K, 3)) == (4, K + 11)
    assert t[:, K + 6:K + 9].tolist() == [[0, 1, 26], [2, 26, 26], [26, 26, 26], [26, 26, 26]]
    assert not t[:, :K + 5].any() and t[:, K + 5].tolist() == [K] * 4 and t[:, -1].tolist() == [1.0] * 4
    # More letters in a cell than slots: the leftmost ones. An image without letters (or without annotation):
    # -1 in every slot (no loss), its shapes as before.
    four = {"size": [112, 28], "kinds": [a, b, c, a], "boxes": [[x, 4, x + 4, 20] for x in (1, 7, 13, 19)]}
    assert object_targets(four, (1, 2, 8), K, letter_slots=3)[0, K + 6:K + 9].tolist() == [0, 1, 2]
    shapes = {"size": [56, 56], "kinds": [3], "boxes": [[30, 4, 50, 22]]}
    t = object_targets(shapes, (1, 4, 4), K, letter_slots=2)
    assert torch.equal(t[:, :K + 6], object_targets(shapes, (1, 4, 4), K)[:, :K + 6])
    assert (t[:, K + 6:K + 8] == -1).all()
    assert (object_targets(None, (1, 4, 4), K, letter_slots=2)[:, K + 6:K + 8] == -1).all()
    # Without slots a letter is out of range of the kinds.
    with pytest.raises(InputError, match="one kind"):
        object_targets(annotation, (1, 2, 8), K)


def test_a_words_letters_share_the_row_of_its_line():
    # A 112x28 banner enlarged to two rows of 4 tokens (a floor of data.min_pixels): "b" (an ascender, centred at
    # y 11: row 0 on its own) and "p" (a descender, centred at y 16: row 1 on its own) stand on one line, y 2-24,
    # whose middle (13) is in row 0: both letters go there, in their columns, left to right, and so does the
    # letters' order for spell.
    b, p, c = (K + synthetic.LETTERS.index(ch) for ch in "bpc")
    annotation = {"size": [112, 28], "kinds": [b, p, c],
                  "boxes": [[1, 2, 9, 20], [16, 8, 24, 24], [36, 6, 44, 20]]}
    t = object_targets(annotation, (1, 4, 8), K, letter_slots=3, letter_positions=4)
    none = len(synthetic.LETTERS)
    letters = [synthetic.LETTERS.index(ch) for ch in "bpc"]
    assert t[:, K + 6:K + 9].tolist() == [[letters[0], letters[1], none], [letters[2], none, none]] + \
        [[none] * 3] * 6
    assert t[:, K + 9:K + 13].tolist() == [[letters[0], letters[1], none, none], [none, none, letters[2], none]] + \
        [[none] * 4] * 6
    # In one row of tokens nothing changes: the same letters, the same cells.
    one_row = object_targets(annotation, (1, 2, 8), K, letter_slots=3)
    assert one_row[:, K + 6:K + 9].tolist() == [[letters[0], letters[1], none], [letters[2], none, none],
                                                [none] * 3, [none] * 3]


def test_letter_slot_loss_is_the_cross_entropy_of_each_slot():
    torch.manual_seed(0)
    head = ObjectMap(hidden_size=16, n_kinds=K, box_weight=1.0, seed=2, kind_loss="softmax", letter_slots=2)
    assert head.proj.out_features == K + 1 + 4 + 2 * 27
    a, b = K, K + 1
    banner = {"size": [56, 28], "kinds": [a, b], "boxes": [[2, 4, 10, 20], [14, 4, 22, 20]]}  # both in cell 0
    shapes = {"size": [56, 56], "kinds": [3], "boxes": [[30, 4, 50, 22]]}
    grids = torch.tensor([[1, 2, 4], [1, 4, 4]])
    targets = torch.cat([object_targets(banner, (1, 2, 4), K, letter_slots=2),
                         object_targets(shapes, (1, 4, 4), K, letter_slots=2)])
    feats = torch.randn(6, 16)
    loss, images = head(feats, targets, grids, unit=4)
    out = head.proj(feats)

    def kinds_and_box(i, t):
        ce = -torch.log_softmax(out[i, :K + 1], -1)[int(t[K + 5])]
        return ce + (sum(abs(out[i, K + 1 + j] - t[K + j]) for j in range(4)) if t[K + 4] else 0.0)

    def slots(i, labels):
        logits = out[i, K + 5:].view(2, 27)
        return sum(-torch.log_softmax(logits[s], -1)[label] for s, label in enumerate(labels))

    banner_loss = (kinds_and_box(0, targets[0]) + slots(0, [0, 1]) + kinds_and_box(1, targets[1]) + slots(1, [26, 26])) / 2
    shapes_loss = sum(kinds_and_box(i, targets[i]) for i in range(2, 6)) / 4  # no letters: the slots add nothing
    assert images == 2 and torch.allclose(loss, banner_loss + shapes_loss, atol=1e-5)


def test_a_run_with_letter_slots_keeps_letters_out_of_the_kinds(tmp_path):
    out = tmp_path / "run"
    train_in_process(stage_config(out, optim={"max_steps": 2, "loss_per": "sample"},
                                  data={"sources": [{"type": "synthetic", "image_size": 56, "seed": 5,
                                                     "reading_size": [112, 28], "tasks": ["reading", "counting"]}]},
                                  checkpoint={"every": 2},
                                  objects={"weight": 1.0, "letters": True, "letter_slots": 3}))
    rows = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert all(r["objects_loss"] > 0 for r in rows)
    state = torch.load(out / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=False)
    assert state["objects"]["proj.weight"].shape[0] == K + 4 + 3 * 27
    with pytest.raises(ConfigError, match="letters: true"):
        config_from_dict(stage_config(tmp_path / "b", objects={"weight": 1.0, "letter_slots": 3}))
    with pytest.raises(ConfigError, match="letter_slots"):
        config_from_dict(stage_config(tmp_path / "b", objects={"weight": 1.0, "letters": True, "letter_slots": 9}))


def test_a_head_starts_from_the_previous_stages_head_with_init_from(tmp_path):
    from zamba2vl.train.trainer import Trainer

    shapes = shapes_data()
    first = tmp_path / "first"
    train_in_process(stage_config(first, optim={"max_steps": 3}, data=shapes, checkpoint={"every": 3},
                                  objects={"weight": 0.5}))
    ckpt = first / "checkpoints" / "step-000003"
    trained = torch.load(ckpt / "trainer_state.pt", weights_only=False)["objects"]

    def trainer(name, **sections):
        config = {**stage_config(tmp_path / name, data=shapes, **sections), "model": {"path": str(ckpt)}}
        threads = torch.get_num_threads()
        try:
            return Trainer(config_from_dict(config), progress=False)
        finally:
            torch.set_num_threads(threads)

    carried = trainer("carried", objects={"weight": 0.5, "init_from": str(ckpt)}).objects.state_dict()
    latest = trainer("latest", objects={"weight": 0.5, "init_from": str(first / "checkpoints" / "latest")})
    fresh = trainer("fresh", objects={"weight": 0.5}).objects.state_dict()
    for key in ("proj.weight", "proj.bias"):
        assert torch.equal(carried[key], trained[key])
        assert torch.equal(latest.objects.state_dict()[key], trained[key])  # the run's pointer to its newest
    assert not torch.equal(fresh["proj.weight"], trained["proj.weight"])  # it moved in 3 steps at lr 3e-3
    with pytest.raises(ConfigError, match="tensors"):  # another head: three letter slots more
        trainer("slots", objects={"weight": 0.5, "letters": True, "letter_slots": 3, "init_from": str(ckpt)})
    with pytest.raises(ConfigError, match="not trained with a reconstruction head"):
        trainer("recon", reconstruction={"weight": 1.0, "init_from": str(ckpt)})
    with pytest.raises(ConfigError, match="not a training checkpoint"):
        trainer("nowhere", objects={"weight": 0.5, "init_from": str(tmp_path)})


def test_match_flags_mark_what_the_question_asks_about():
    seen = {"counting": 0, "grounding": 0}
    for i in range(40):
        for task in seen:
            ex = synthetic.make_example(task, 11, i, 112, "box")
            annotation = synthetic.object_annotation(ex)
            match = annotation["match"]
            assert len(match) == len(annotation["kinds"]) and set(match) <= {0, 1}
            if task == "counting":
                assert sum(match) == int(ex.answer)  # the counted objects are the matched ones
            else:
                assert match == [int(j == ex.meta["target"]) for j in range(len(match))] and sum(match) == 1
            seen[task] += 1
            t = object_targets(annotation, (1, 8, 8), K)
            # 1 on the cells that hold a matched object's centre (the cells marked with its kind: an object that is
            # not asked about never has the kind of one that is), 0 elsewhere.
            asked = {k for k, m in zip(annotation["kinds"], match) if m}
            cells = {c for c in range(16) if any(t[c, k] == 1 for k in asked)}
            assert len(cells) >= min(1, sum(match))
            assert t[:, MATCH].tolist() == [1.0 if c in cells else 0.0 for c in range(16)]
    assert not any("match" in (synthetic.object_annotation(synthetic.make_example("reading", 11, i, 112), True)
                               or {}) for i in range(3))
    with pytest.raises(InputError, match="match flags"):
        object_targets({"size": [56, 56], "kinds": [0, 1], "boxes": [[0, 0, 9, 9]] * 2, "match": [1]}, (1, 4, 4), K)


def test_match_loss_reads_the_language_model_after_its_layer():
    from zamba2vl.train.build import random_model

    config = tiny_vl_config()
    model = random_model(config, seed=1)
    layers = len(model.language_model.model.layers)
    assert layers >= 2
    grid = torch.tensor([[1, 4, 4], [1, 4, 4]])
    pixels = torch.randn(32, 3 * 14 * 14)
    img = config.image_token_index
    # Image 1 knows its match flags (object 1 asked about, in cell 3), image 2 has none (-1: no loss).
    first = object_targets({"size": [56, 56], "kinds": [4, 2], "boxes": [[3, 3, 20, 20], [30, 30, 50, 50]],
                            "match": [0, 1]}, (1, 4, 4), K)
    assert first[:, MATCH].tolist() == [0.0, 0.0, 0.0, 1.0]
    targets = torch.cat([first, object_targets(None, (1, 4, 4), K)])
    ids = torch.tensor([[1, 7, img, img, img, img, 5, 6], [1, 8, 9, img, img, img, img, 2]])
    labels = torch.full_like(ids, -100)
    labels[:, -1] = ids[:, -1]
    head = QueryMatch(config.text_config.hidden_size)
    with torch.no_grad():
        head.proj.bias.fill_(0.3)
    base = CausalLMLoss(model, None)
    with_match = CausalLMLoss(model, None, match=head, match_weight=2.0, match_layer=1)
    plain, count = base(ids, labels, pixels, grid)
    loss, count2 = with_match(ids, labels, pixels, grid, None, targets)
    assert count == count2 == 2 and with_match.last_parts["asked"] == 1
    # The same hidden states by hand: the first layer only, no final norm.
    hidden = first_layer_states(model, ids, pixels, grid)
    lm = model.language_model.model
    kept, norm = lm.layers, lm.final_layernorm
    logits = head.proj(hidden[ids == img])[:4, 0]
    expected = F.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert torch.allclose(with_match.last_parts["match"], expected, atol=1e-5)
    assert torch.allclose(loss, plain + 2.0 * expected, atol=1e-5)
    # The match loss reaches the head and the layers it reads, not the ones after it (no labels here, so the
    # language model's own loss adds nothing).
    model.zero_grad()
    only, _ = with_match(ids, torch.full_like(ids, -100), pixels, grid, None, targets)
    assert torch.allclose(only, 2.0 * expected, atol=1e-5)
    only.backward()
    assert head.proj.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in kept[0].parameters())
    after = [*kept[1].parameters(), *lm.blocks.parameters(), *norm.parameters()]
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in after)


def test_a_run_with_the_match_objective_logs_it_and_checks_its_settings(tmp_path):
    out = tmp_path / "run"
    rows = annotated_run(out, 3, objects={"weight": 0.5}, match={"weight": 1.5, "layer": 1})
    assert len(rows) == 3
    for r in rows:  # loss = lm_loss + 0.5 x objects + 1.5 x match (every image here is asked about)
        assert 0 < r["match_loss"] < 5
        assert abs(r["loss"] - (r["lm_loss"] + 0.5 * r["objects_loss"] + 1.5 * r["match_loss"])) < 1e-5
    state = torch.load(out / "checkpoints" / "step-000003" / "trainer_state.pt", weights_only=False)
    assert set(state["match"]) == {"proj.weight", "proj.bias"}
    with pytest.raises(ConfigError, match="objects.weight"):
        config_from_dict(stage_config(tmp_path / "b", match={"weight": 1.0}))
    with pytest.raises(ConfigError, match="match"):
        config_from_dict(stage_config(tmp_path / "c", objects={"weight": 1.0}, match={"weight": 1.0, "layer": 0}))
    with pytest.raises(ConfigError, match="match.layer"):
        train_in_process(stage_config(tmp_path / "d", objects={"weight": 1.0}, match={"weight": 1.0, "layer": 99}))


def test_letter_positions_name_each_letter_of_the_word_on_its_cell():
    # A 112x28 banner, 4 cells. The word "cab" (annotation order = the word's), centres at x 40 (cell 1), 5 and 20
    # (both cell 0): place 0 is c on cell 1, places 1 and 2 are a and b on cell 0; 26 = not here; place 3 unused.
    a, b, c = (K + synthetic.LETTERS.index(ch) for ch in "abc")
    annotation = {"size": [112, 28], "kinds": [c, a, b], "boxes": [[36, 4, 44, 20], [1, 4, 9, 20], [16, 4, 24, 20]]}
    t = object_targets(annotation, (1, 2, 8), K, letter_slots=2, letter_positions=4)
    assert t.shape == (4, target_width(K, 2, 4)) == (4, K + 14)
    assert t[:, MATCH - 4:MATCH].tolist() == [[26, 0, 1, 26], [2, 26, 26, 26], [26] * 4, [26] * 4]
    # The slots are as without positions (left to right within a cell), and so are the other columns.
    plain = object_targets(annotation, (1, 2, 8), K, letter_slots=2)
    assert torch.equal(t[:, :K + 8], plain[:, :K + 8]) and torch.equal(t[:, -2:], plain[:, -2:])
    # Letters past the last place are not named; an image without letters is -1 (no loss) on every place.
    assert object_targets(annotation, (1, 2, 8), K, letter_slots=2, letter_positions=2)[:, -4:-2].tolist() == \
        [[26, 0], [2, 26], [26, 26], [26, 26]]
    shapes = {"size": [56, 56], "kinds": [3], "boxes": [[30, 4, 50, 22]]}
    assert (object_targets(shapes, (1, 4, 4), K, letter_slots=2, letter_positions=4)[:, MATCH - 4:MATCH] == -1).all()
    assert (object_targets(None, (1, 4, 4), K, letter_slots=2, letter_positions=4)[:, MATCH - 4:MATCH] == -1).all()
    with pytest.raises(ValueError, match="letter_slots"):
        object_targets(annotation, (1, 2, 8), K, letter_positions=4)
    # A synthetic banner: every letter of the word is named once, in the word's order, on the token reading left
    # to right (a letter's cell never comes before an earlier letter's).
    for i in range(10):
        ex = synthetic.make_example("reading", 3, i, 112, reading_size=(224, 28))
        places = object_targets(synthetic.object_annotation(ex, True), (1, 2, 16), K, letter_slots=3,
                                letter_positions=10)[:, MATCH - 10:MATCH].long()
        word = ex.answer
        named = [(int((places[:, j] != 26).nonzero()[0]), synthetic.LETTERS[int(places[:, j].min())])
                 for j in range(len(word))]
        assert "".join(ch for _, ch in named) == word
        assert [cell for cell, _ in named] == sorted(cell for cell, _ in named)
        assert ((places[:, :len(word)] != 26).sum(0) == 1).all() and (places[:, len(word):] == 26).all()


def test_spell_loss_is_the_cross_entropy_of_each_place_after_its_layer():
    from zamba2vl.train.build import random_model

    config = tiny_vl_config()
    model = random_model(config, seed=1)
    grid = torch.tensor([[1, 2, 8], [1, 4, 4]])  # a 112x28 banner (4 tokens) and a 56x56 image without letters
    pixels = torch.randn(32, 3 * 14 * 14)
    img = config.image_token_index
    a, b = K, K + 1
    banner = {"size": [112, 28], "kinds": [b, a], "boxes": [[2, 4, 10, 20], [30, 4, 38, 20]]}  # "ba": cells 0, 1
    targets = torch.cat([object_targets(banner, (1, 2, 8), K, letter_slots=1, letter_positions=3),
                         object_targets(None, (1, 4, 4), K, letter_slots=1, letter_positions=3)])
    ids = torch.tensor([[1, 7, img, img, img, img, 5, 6], [1, 8, 9, img, img, img, img, 2]])
    labels = torch.full_like(ids, -100)
    head = Spelling(config.text_config.hidden_size, positions=3)
    assert head.proj.out_features == 3 * 27
    spelling = CausalLMLoss(model, None, spell=head, spell_weight=0.5, spell_layer=1)
    loss, _ = spelling(ids, labels, pixels, grid, None, targets)
    assert spelling.last_parts["spelt"] == 1
    hidden = first_layer_states(model, ids, pixels, grid)
    lm = model.language_model.model
    kept, norm = lm.layers, lm.final_layernorm
    logits = head.proj(hidden[ids == img])[:4].view(4, 3, 27)
    wanted = [[1, 26, 26], [26, 0, 26], [26, 26, 26], [26, 26, 26]]  # b first (cell 0), then a (cell 1)
    expected = sum(-torch.log_softmax(logits[i, j], -1)[wanted[i][j]] for i in range(4) for j in range(3)) / 4
    assert torch.allclose(spelling.last_parts["spell"], expected, atol=1e-5)
    assert torch.allclose(loss, 0.5 * expected, atol=1e-5)  # no labels: only the spell loss
    loss.backward()
    assert head.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in [*kept[1].parameters(), *norm.parameters()])
    # With match at another layer, both read their own layer's states in one forward.
    match = QueryMatch(config.text_config.hidden_size)
    both = CausalLMLoss(model, None, match=match, match_weight=1.0, match_layer=2, spell=head, spell_weight=0.5,
                        spell_layer=1)
    together, _ = both(ids, labels, pixels, grid, None, targets)
    assert torch.allclose(both.last_parts["spell"], expected, atol=1e-5)
    assert torch.allclose(together, 0.5 * expected, atol=1e-5)  # no match flags here: the match head adds nothing


def test_a_run_with_the_spell_objective_logs_it_and_checks_its_settings(tmp_path):
    out = tmp_path / "run"
    reading = {"sources": [{"type": "synthetic", "image_size": 56, "seed": 5, "reading_size": [112, 28],
                            "tasks": ["reading"]}]}  # every image has letters: the means below add up
    objects = {"weight": 1.0, "letters": True, "letter_slots": 2}
    train_in_process(stage_config(out, optim={"max_steps": 3, "loss_per": "sample"}, data=reading,
                                  batch={"global_batch_size": 4, "micro_batch_size": 4}, checkpoint={"every": 3},
                                  objects=objects, spell={"weight": 0.25, "layer": 1, "positions": 6}))
    rows = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for r in rows:  # loss = lm_loss + objects + 0.25 x spell (10 .. 100: six places of 27 classes, fresh head)
        assert 10 < r["spell_loss"] < 100
        assert abs(r["loss"] - (r["lm_loss"] + r["objects_loss"] + 0.25 * r["spell_loss"])) < 1e-5
    state = torch.load(out / "checkpoints" / "step-000003" / "trainer_state.pt", weights_only=False)
    assert state["spell"]["proj.weight"].shape[0] == 6 * 27
    with pytest.raises(ConfigError, match="letter_slots"):
        config_from_dict(stage_config(tmp_path / "b", objects={"weight": 1.0}, spell={"weight": 1.0}))
    with pytest.raises(ConfigError, match="spell"):
        config_from_dict(stage_config(tmp_path / "c", objects=objects, spell={"weight": 1.0, "positions": 0}))
    with pytest.raises(ConfigError, match="stage: vision"):
        config_from_dict(stage_config(tmp_path / "d", stage="vision", objects=objects, spell={"weight": 1.0}))
    with pytest.raises(ConfigError, match="spell.layer"):
        train_in_process(stage_config(tmp_path / "e", data=reading, objects=objects,
                                      spell={"weight": 1.0, "layer": 99}))
