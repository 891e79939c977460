"""Log-log line plots as PNG, drawn with Pillow alone (matplotlib is not a dependency of this project).

    line_plot("ttft.png", "Time to first token", {"zamba2vl": [(1024, 0.5), (2048, 1.1)], ...},
              xlabel="prompt tokens", ylabel="seconds")
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]
W, H, LEFT, RIGHT, TOP, BOTTOM = 1000, 560, 86, 250, 48, 64


def _font():
    try:
        return ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _decades(lo: float, hi: float) -> list[float]:
    """Tick values on a log axis: 1, 2, 5 x powers of ten inside [lo, hi] (only powers of ten when it spans many)."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1, 2, 5) if b - a <= 3 else (1,)
    ticks = [m * 10.0**e for e in range(a, b + 1) for m in mults]
    inside = [t for t in ticks if lo * 0.999 <= t <= hi * 1.001]
    return inside or [lo, hi]


def _label(v: float) -> str:
    if v >= 1000 and v == int(v):
        return f"{int(v) // 1024}k" if int(v) % 1024 == 0 else f"{v:.0f}"
    return f"{v:.3g}"


def line_plot(path: str | Path, title: str, series: Mapping[str, Sequence[tuple[float, float]]], *,
              xlabel: str, ylabel: str, logx: bool = True, logy: bool = True, notes: Sequence[str] = (),
              dashed: Sequence[str] = (), xticks: Sequence[float] | None = None) -> Path:
    """One line per series (points sorted by x, non-positive values dropped on log axes); legend on the right.

    ``dashed`` names series drawn as dashed lines (reference lines such as a floor or a limit); ``notes`` are lines
    of small text under the legend (conditions of the run).
    """
    path = Path(path)
    font = _font()
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    clean = {k: sorted((float(x), float(y)) for x, y in v if (x > 0 or not logx) and (y > 0 or not logy))
             for k, v in series.items()}
    clean = {k: v for k, v in clean.items() if v}
    d.text((LEFT, 14), title, fill="black", font=font)
    x0, y0, x1, y1 = LEFT, TOP, W - RIGHT, H - BOTTOM
    d.rectangle([x0, y0, x1, y1], outline=(90, 90, 90))
    if not clean:
        d.text((x0 + 20, y0 + 20), "no data", fill="black", font=font)
        img.save(path)
        return path
    xs = [x for v in clean.values() for x, _ in v]
    ys = [y for v in clean.values() for _, y in v]
    xlo, xhi, ylo, yhi = min(xs), max(xs), min(ys), max(ys)
    tx = (lambda v: math.log10(v)) if logx else (lambda v: v)
    ty = (lambda v: math.log10(v)) if logy else (lambda v: v)
    if logx:
        xlo, xhi = (xlo / 1.5, xhi * 1.5) if xlo == xhi else (xlo / 1.15, xhi * 1.15)
    else:
        pad = (xhi - xlo) * 0.05 or 1.0
        xlo, xhi = xlo - pad, xhi + pad
    if logy:
        ylo, yhi = (ylo / 2, yhi * 2) if ylo == yhi else (ylo / 1.3, yhi * 1.3)
    else:
        pad = (yhi - ylo) * 0.08 or abs(yhi) * 0.1 or 1.0
        ylo, yhi = min(0.0, ylo - pad), yhi + pad

    def px(x: float) -> float:
        return x0 + (tx(x) - tx(xlo)) / (tx(xhi) - tx(xlo)) * (x1 - x0)

    def py(y: float) -> float:
        return y1 - (ty(y) - ty(ylo)) / (ty(yhi) - ty(ylo)) * (y1 - y0)

    grid = (225, 225, 225)
    if xticks is None and len(set(xs)) <= 12:
        xticks = sorted(set(xs))  # the measured lengths themselves
    for t in (xticks if xticks is not None else (_decades(xlo, xhi) if logx else _linear_ticks(xlo, xhi))):
        if xlo <= t <= xhi:
            X = px(t)
            d.line([(X, y0), (X, y1)], fill=grid)
            s = _label(t)
            d.text((X - d.textlength(s, font=font) / 2, y1 + 6), s, fill="black", font=font)
    for t in (_decades(ylo, yhi) if logy else _linear_ticks(ylo, yhi)):
        Y = py(t)
        d.line([(x0, Y), (x1, Y)], fill=grid)
        s = _label(t)
        d.text((x0 - 8 - d.textlength(s, font=font), Y - 7), s, fill="black", font=font)
    d.rectangle([x0, y0, x1, y1], outline=(90, 90, 90))
    d.text(((x0 + x1) / 2 - d.textlength(xlabel, font=font) / 2, y1 + 28), xlabel, fill="black", font=font)
    d.text((10, y0 - 22), ylabel, fill="black", font=font)

    ly = y0
    colors: dict[str, tuple] = {}
    for name in clean:  # solid series get the palette in order; a dashed "<name> floor" line takes <name>'s color
        if name not in dashed:
            colors[name] = PALETTE[len(colors) % len(PALETTE)]
    for name in clean:
        if name in dashed:
            base = name.rsplit(" ", 1)[0]
            colors[name] = colors.get(base) or PALETTE[len(colors) % len(PALETTE)]
    for name, pts in clean.items():
        color = colors[name]
        P = [(px(x), py(y)) for x, y in pts]
        if name in dashed:
            for (ax, ay), (bx, by) in zip(P, P[1:]):
                n = max(1, int(math.hypot(bx - ax, by - ay) / 8))
                for k in range(0, n, 2):
                    d.line([(ax + (bx - ax) * k / n, ay + (by - ay) * k / n),
                            (ax + (bx - ax) * (k + 1) / n, ay + (by - ay) * (k + 1) / n)], fill=color, width=2)
        elif len(P) > 1:
            d.line(P, fill=color, width=2)
        for X, Y in P:
            d.ellipse([X - 3, Y - 3, X + 3, Y + 3], fill=color)
        if name in dashed:
            d.line([(x1 + 14, ly + 7), (x1 + 20, ly + 7)], fill=color, width=3)
            d.line([(x1 + 27, ly + 7), (x1 + 34, ly + 7)], fill=color, width=3)
        else:
            d.line([(x1 + 14, ly + 7), (x1 + 34, ly + 7)], fill=color, width=3)
        for k, piece in enumerate(_wrap(name, 26)):
            d.text((x1 + 40, ly), piece, fill="black", font=font)
            ly += 16
        ly += 4
    ly += 10
    for note in notes:
        for piece in _wrap(note, 28):
            d.text((x1 + 14, ly), piece, fill=(80, 80, 80), font=font)
            ly += 16
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _linear_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _wrap(text: str, width: int) -> list[str]:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return lines + ([cur] if cur else [])
