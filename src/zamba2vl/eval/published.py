"""Zyphra's published Zamba2-VL scores (spec section 12.3), keyed by model size and benchmark.

"card" numbers come from the model cards; "3p" numbers from a third-party summary of a card that could
not be retrieved in full. The tables place our score beside these.
"""

from __future__ import annotations

# benchmark key -> (1.2B, 2.7B, 7B); None where no number was published / retrieved.
_TABLE = {
    "AI2D (test)": (81.5, 85.8, 90.6),
    "ChartQA (test)": (77.6, 79.6, 85.3),
    "DocVQA (test)": (87.4, 90.9, 92.9),
    "InfoVQA (test)": (60.7, 66.5, None),
    "TextVQA (val)": (71.9, 77.4, 81.0),
    "OCRBench": (71.4, 73.6, 81.6),
    "VQA v2.0 (val)": (78.0, 79.6, 82.8),
    "MathVista (mini)": (48.7, 51.0, 61.2),
    "MMMU (val)": (32.4, 37.7, 44.0),
    "SEED (image)": (71.1, None, None),
    "BLINK (val)": (43.2, None, None),
    "RealWorldQA": (65.9, None, None),
    "CountBenchQA": (56.9, 87.5, 90.6),
    "PixMoCount (test)": (62.5, 82.5, 85.3),
}
SIZES = ("1.2B", "2.7B", "7B")
# Which numbers are third-party rather than read on a Zyphra card.
_THIRD_PARTY = {"2.7B": {"MathVista (mini)", "MMMU (val)", "CountBenchQA", "PixMoCount (test)"},
                "7B": set(_TABLE)}


def published_score(size: str | None, key: str | None) -> tuple[float, str] | None:
    """(score, "card" | "3p") for a model size and benchmark key, or None when nothing was published."""
    if size not in SIZES or key not in _TABLE:
        return None
    value = _TABLE[key][SIZES.index(size)]
    if value is None:
        return None
    return value, "3p" if key in _THIRD_PARTY.get(size, set()) else "card"


def size_from_name(model: str) -> str | None:
    """Guess "1.2B" / "2.7B" / "7B" from a model name or path such as Zyphra/Zamba2-VL-2.7B."""
    name = model.upper().replace("_", "-")
    for size in SIZES:
        if f"-{size.upper()}" in name or name.endswith(size.upper()):
            return size
    return None
