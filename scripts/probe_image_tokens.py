"""Where does a Zamba2-VL keep, and where does it lose, what is at each place in an image?

For counting-style synthetic images (1-9 coloured shapes), each merged image token covers one cell of the image
(28x28 pixels at 112 with 14-pixel patches merged 2x2). This script collects, for every token, the features at
each stage of the vision side: the raw pixels of its patches, the patch embedding, the output of each vision
block, and the merger's output (what the language model reads). On each it trains two small probes (an MLP of
one hidden layer, trained on 60% of the images, stopped where it does best on 15%, scored on the last 25%):

  colour set  which of the 8 colours appear in the token's cell (exact set right)
  shape       the shape of the object whose centre lies in the cell (tokens that have one)

and reports the effective rank of the features (exp of the entropy of the normalised singular values squared).
A stage where the probes fall is where the model throws per-place information away; the language model can only
bind "the red circle" in a question to an image token if that token still says red and circle.

    .venv/bin/python scripts/probe_image_tokens.py [--model nano] [--images 1200] [--json out.json]

Session 9 (2026-12-05), session 8's nano model, defaults: colour set 79% on the raw pixels, 75-81% through the
vision tower, 42% at the merger's output (effective rank 5.6, against 18 at its input); shape 84% on the pixels,
75% after the patch embedding, falling block by block to 60% and 57% at the merger's output. Session 10's model
first run (trained with the reconstruction objective, train/reconstruction.py; the shipped model is its second
run, with another task mix, not probed here): colour set 80-84% at
every stage and 82.5% at the merger's output (effective rank 14.7); shape 92% through the tower, 86.6% at the merger.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from zamba2vl.train import synthetic
from zamba2vl.vision.windows import inverse_permutation, window_index

COLOURS = tuple(synthetic.COLORS)
SHAPES = synthetic.SHAPES


def token_labels(example: synthetic.SyntheticExample, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(colour presence [rows*cols, colours] 0/1, shape index of the object centred in each cell or -1) for an image
    cut into rows x cols equal cells in reading order (the merged tokens of an image the processor did not resize)."""
    width, height = example.image.size
    colour = np.zeros((rows * cols, len(COLOURS)), np.float32)
    shape = -np.ones(rows * cols, np.int64)
    for o in example.meta["objects"]:
        x1, y1, x2, y2 = o["box"]  # x2, y2 exclusive
        for t in range(rows * cols):
            r, c = divmod(t, cols)
            cx1, cx2 = c * width // cols, (c + 1) * width // cols
            cy1, cy2 = r * height // rows, (r + 1) * height // rows
            if x1 < cx2 and x2 > cx1 and y1 < cy2 and y2 > cy1:
                colour[t, COLOURS.index(o["color"])] = 1
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        shape[min(rows - 1, int(cy * rows / height)) * cols + min(cols - 1, int(cx * cols / width))] = \
            SHAPES.index(o["shape"])
    return colour, shape


@torch.no_grad()
def stage_features(model, processor, image) -> dict[str, torch.Tensor]:
    """Features of each merged token of one image at each stage, [tokens, dims], tokens in reading order."""
    tower = model.vision_tower
    c = tower.config
    unit = c.spatial_merge_size**2
    out = processor.image_processor([image])
    pixels, grid = out["pixel_values"], out["image_grid_thw"]
    caught: dict[str, torch.Tensor] = {}
    hooks = [tower.patch_embed.register_forward_hook(lambda m, i, o: caught.__setitem__("patch embedding", o))]
    for k, block in enumerate(tower.blocks):
        hooks.append(block.register_forward_hook(lambda m, i, o, k=k: caught.__setitem__(f"vision block {k}", o)))
    try:
        merged = model.get_image_features(pixels, grid).float()
    finally:
        for h in hooks:
            h.remove()
    index, _ = window_index(grid, window_size=c.window_size, patch_size=c.patch_size,
                            spatial_merge_size=c.spatial_merge_size)
    back = inverse_permutation(index)
    n = merged.shape[0]
    feats = {"pixels": pixels.float().view(n, -1), "patch embedding": caught["patch embedding"].float().view(n, -1)}
    for k in range(len(tower.blocks)):  # the blocks run in window order
        x = caught[f"vision block {k}"].float().view(n, unit, -1)[back]
        feats[f"vision block {k}"] = x.reshape(n, -1)
    feats["merger (language model input)"] = merged
    return feats


def effective_rank(x: torch.Tensor) -> float:
    s = torch.linalg.svdvals(x - x.mean(0))
    p = s**2 / (s**2).sum()
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))


def probe(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, val: torch.Tensor, test: torch.Tensor,
          multi_label: bool, steps: int, seed: int) -> float:
    """Held-out accuracy (exact set for multi-label) of a one-hidden-layer MLP on standardised features, at the step
    (checked every 50) where it did best on the validation tokens: long training overfits these few thousand."""
    torch.manual_seed(seed)
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mean) / std
    classes = y.shape[1] if multi_label else int(y.max()) + 1
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.GELU(), torch.nn.Linear(256, classes))
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=0.05)
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits if multi_label else torch.nn.functional.cross_entropy

    def accuracy(idx: torch.Tensor) -> float:
        with torch.no_grad():
            z = net(x[idx])
        if multi_label:
            return float(((z > 0).float() == y[idx]).all(1).float().mean())
        return float((z.argmax(1) == y[idx]).float().mean())

    best_val, best_test = -1.0, 0.0
    for step in range(1, steps + 1):
        j = train[torch.randint(0, len(train), (512,))]
        loss = loss_fn(net(x[j]), y[j])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            v = accuracy(val)
            if v > best_val:
                best_val, best_test = v, accuracy(test)
    return best_test


def run(model_path: str, images: int, seed: int, image_size: int, steps: int, only: str | None = None) -> dict:
    from zamba2vl import load

    pipe = load(model_path)
    model = pipe.model.eval()
    vc = model.vision_tower.config
    cell = vc.patch_size * vc.spatial_merge_size
    stages: dict[str, list[torch.Tensor]] = {}
    colours, shapes = [], []
    for i in range(images):
        ex = synthetic.make_example("counting", seed, i, image_size)
        feats = stage_features(model, pipe.processor, ex.image)
        n = next(iter(feats.values())).shape[0]
        rows = cols = int(round(n**0.5))
        if rows * cols != n or ex.image.size != (cols * cell, rows * cell):
            raise SystemExit(f"the processor resized the {ex.image.size} image ({n} merged tokens of {cell} pixels); "
                             f"pick an --image-size that is a multiple of {cell} within its pixel limits")
        c, s = token_labels(ex, rows, cols)
        colours.append(c)
        shapes.append(s)
        for k, v in feats.items():
            stages.setdefault(k, []).append(v)
    colour = torch.tensor(np.concatenate(colours))
    shape = torch.tensor(np.concatenate(shapes))
    tokens = len(colour)
    # Whole images in each part (60% train, 15% validation, 25% test): every image has the same token count.
    per = rows * cols
    cut1, cut2 = tokens * 60 // 100 // per * per, tokens * 75 // 100 // per * per
    c_parts = torch.arange(tokens).split([cut1, cut2 - cut1, tokens - cut2])  # train, validation, test
    s_parts = [p[shape[p] >= 0] for p in c_parts]  # the tokens with an object centred in them
    result = {
        "model": model_path, "images": images, "seed": seed, "image_size": image_size, "probe_steps": steps,
        "baselines": {"colour set, all absent": float((colour[c_parts[2]] == 0).all(1).float().mean()),
                      "shape, majority": float(torch.bincount(shape[s_parts[2]]).max() / len(s_parts[2]))},
        "stages": [],
    }
    for name, per_image in stages.items():
        if only and not any(word in name for word in only.split(",")):
            continue
        x = torch.cat(per_image)
        result["stages"].append({
            "stage": name, "dims": x.shape[1], "effective_rank": round(effective_rank(x), 1),
            "colour_set": round(probe(x, colour, *c_parts, True, steps, seed), 3),
            "shape": round(probe(x, shape, *s_parts, False, steps, seed), 3),
        })
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="nano", help="model folder, Hub id or 'nano' (default)")
    parser.add_argument("--images", type=int, default=1200, help="counting images to probe on (default 1200)")
    parser.add_argument("--seed", type=int, default=4242, help="synthetic seed (default 4242)")
    parser.add_argument("--image-size", type=int, default=112, help="image side in pixels (default 112)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps of each probe, at most (default 1000)")
    parser.add_argument("--stages", help="probe only the stages whose names contain one of these (comma-separated), "
                        "e.g. 'block 3,merger'")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args.model, args.images, args.seed, args.image_size, args.steps, args.stages)
    b = result["baselines"]
    print(f"{args.model}: {args.images} images, seed {args.seed}, probes scored on the last quarter; "
          f"baselines: colour set {b['colour set, all absent']:.1%} (all absent), shape {b['shape, majority']:.1%} "
          "(majority)")
    print("| stage | dims | effective rank | colour set | shape |\n|---|---|---|---|---|")
    for s in result["stages"]:
        print(f"| {s['stage']} | {s['dims']} | {s['effective_rank']} | {s['colour_set']:.1%} | {s['shape']:.1%} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
