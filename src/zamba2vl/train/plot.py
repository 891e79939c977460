"""The loss curve (and eval accuracy) of a run as a PNG, drawn with Pillow alone.

    python -m zamba2vl.train.plot runs/nano/loss.jsonl [runs/nano/eval.jsonl] -o runs/nano/loss.png

Top panel: the loss of every step (light) and its exponential moving average (dark; its time constant is 0.5% of
the run, so it lags by little), on a log axis when it spans more than a factor of 20; with the reconstruction
objective on, also the moving average of the language model's part of the loss (``lm_loss``). Bottom panel,
when there is an eval log: accuracy per task over steps.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127)]
_W, _PANEL_H, _LEFT, _RIGHT, _TOP, _BOTTOM = 960, 420, 78, 150, 40, 46


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill; the plot can do without it
                continue
    return rows


def ema(values: list[float], alpha: float) -> list[float]:
    out, avg = [], None
    for v in values:
        avg = v if avg is None else alpha * v + (1 - alpha) * avg
        out.append(avg)
    return out


def nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """About ``n`` round numbers (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _label(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"


class _Panel:
    def __init__(self, draw: ImageDraw.ImageDraw, top: int, x_range, y_range, log_y: bool, font):
        self.d, self.top, self.font = draw, top, font
        self.x0, self.x1 = x_range
        self.log = log_y
        lo, hi = y_range
        self.y0, self.y1 = (math.log10(lo), math.log10(hi)) if log_y else (lo, hi)
        self.left, self.right = _LEFT, _W - _RIGHT
        self.bottom = top + _PANEL_H - _TOP - _BOTTOM  # the panel and its margins fit in _PANEL_H

    def px(self, x: float, y: float) -> tuple[float, float]:
        y = math.log10(max(y, 1e-12)) if self.log else y
        fx = (x - self.x0) / max(self.x1 - self.x0, 1e-12)
        fy = (y - self.y0) / max(self.y1 - self.y0, 1e-12)
        return self.left + fx * (self.right - self.left), self.bottom - fy * (self.bottom - self.top - 8)

    def axes(self, title: str, y_label: str) -> None:
        d, grey = self.d, (225, 225, 225)
        for x in nice_ticks(self.x0, self.x1):
            if self.x0 <= x <= self.x1:
                px, _ = self.px(x, 1)
                d.line([(px, self.top), (px, self.bottom)], fill=grey)
                d.text((px, self.bottom + 6), _label(x), fill="black", font=self.font, anchor="ma")
        if self.log:
            ticks = [10 ** e * m for e in range(math.floor(self.y0), math.ceil(self.y1) + 1) for m in (1, 2, 5)]
        else:
            ticks = nice_ticks(self.y0, self.y1)
        for y in ticks:
            v = math.log10(y) if self.log else y
            if self.y0 - 1e-9 <= v <= self.y1 + 1e-9:
                _, py = self.px(self.x0, y)
                d.line([(self.left, py), (self.right, py)], fill=grey)
                d.text((self.left - 6, py), _label(y), fill="black", font=self.font, anchor="rm")
        d.rectangle([self.left, self.top, self.right, self.bottom], outline="black")
        d.text(((self.left + self.right) / 2, self.top - 8), title, fill="black", font=self.font, anchor="md")
        d.text(((self.left + self.right) / 2, self.bottom + 24), "step", fill="black", font=self.font, anchor="ma")
        d.text((10, (self.top + self.bottom) / 2), y_label, fill="black", font=self.font, anchor="lm")

    def line(self, xs, ys, color, width: int = 1) -> None:
        points = [self.px(x, y) for x, y in zip(xs, ys)]
        if len(points) == 1:
            x, y = points[0]
            self.d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        elif points:
            self.d.line(points, fill=color, width=width)

    def legend(self, i: int, text: str, color) -> None:
        y = self.top + 8 + 18 * i
        self.d.line([(self.right + 12, y), (self.right + 34, y)], fill=color, width=3)
        self.d.text((self.right + 40, y), text, fill="black", font=self.font, anchor="lm")


def plot_run(loss_rows: list[dict], eval_rows: list[dict], out: str | Path, title: str = "training loss") -> Path:
    """Draw the run's curves into ``out`` (PNG); returns the path."""
    panels = 2 if eval_rows else 1
    image = Image.new("RGB", (_W, _PANEL_H * panels), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    steps = [r["step"] for r in loss_rows]
    losses = [r["loss"] for r in loss_rows]
    x_hi = max(steps + [r["step"] for r in eval_rows] + [1])
    if losses:
        lo, hi = min(losses), max(losses)
        log_y = lo > 0 and hi / lo > 20
        pad = 0 if log_y else 0.05 * max(hi - lo, 1e-6)
        panel = _Panel(draw, _TOP, (0, x_hi), (lo - pad, hi + pad) if not log_y else (lo, hi), log_y, font)
        panel.axes(f"{title} (last {losses[-1]:.4g} at step {steps[-1]})", "loss")
        panel.line(steps, losses, (170, 200, 230))
        alpha = min(0.3, 200 / max(len(losses), 1))
        panel.line(steps, ema(losses, alpha), _PALETTE[0], width=2)
        panel.legend(0, "loss", (170, 200, 230))
        panel.legend(1, "moving average", _PALETTE[0])
        lm = [(r["step"], r["lm_loss"]) for r in loss_rows if "lm_loss" in r]
        if lm:
            panel.line([a for a, _ in lm], ema([b for _, b in lm], alpha), _PALETTE[1], width=2)
            panel.legend(2, "LM part (avg)", _PALETTE[1])
    else:
        draw.text((_W / 2, _PANEL_H / 2), "no loss logged yet", fill="black", font=font, anchor="mm")
    if eval_rows:
        panel = _Panel(draw, _PANEL_H + _TOP, (0, x_hi), (0.0, 1.0), False, font)
        panel.axes("held-out accuracy (greedy)", "accuracy")
        names = [k for k in eval_rows[-1]["accuracy"] if k != "overall"] + ["overall"]
        for i, name in enumerate(names):
            rows = [r for r in eval_rows if name in r["accuracy"]]
            color = (0, 0, 0) if name == "overall" else _PALETTE[(i + 1) % len(_PALETTE)]
            panel.line([r["step"] for r in rows], [r["accuracy"][name] for r in rows], color,
                       width=3 if name == "overall" else 2)
            panel.legend(i, name, color)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    image.save(tmp, format="PNG")
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Plot a zamba2vl training run's loss log (and eval log) to a PNG.")
    p.add_argument("loss_log", help="loss.jsonl of a run")
    p.add_argument("eval_log", nargs="?", help="eval.jsonl of the run (optional)")
    p.add_argument("-o", "--out", default=None, help="PNG to write (default: loss.png beside the log)")
    args = p.parse_args(argv)
    out = args.out or Path(args.loss_log).with_name("loss.png")
    print(plot_run(read_jsonl(args.loss_log), read_jsonl(args.eval_log) if args.eval_log else [], out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
