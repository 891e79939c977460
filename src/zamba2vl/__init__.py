"""zamba2vl: Zyphra's Zamba2-VL vision-language models in pure PyTorch."""

__version__ = "0.1.0"

from zamba2vl.config import VisionConfig, Zamba2TextConfig, Zamba2VLConfig  # noqa: E402
from zamba2vl.errors import CheckpointError, ConfigError, ImageError, InputError, Zamba2VLError  # noqa: E402

__all__ = [
    "Zamba2LM", "Zamba2VL", "Processor", "GenerationConfig", "load",
    "VisionConfig", "Zamba2TextConfig", "Zamba2VLConfig",
    "CheckpointError", "ConfigError", "ImageError", "InputError", "Zamba2VLError",
]


_LAZY = {
    "Zamba2LM": ("zamba2vl.text.model", "Zamba2LM"),
    "Zamba2VL": ("zamba2vl.model", "Zamba2VL"),
    "Processor": ("zamba2vl.processing.processor", "Processor"),
    "GenerationConfig": ("zamba2vl.generation", "GenerationConfig"),
    "load": ("zamba2vl.pipeline", "load"),
}


def __getattr__(name):  # lazy imports keep `import zamba2vl` cheap
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'zamba2vl' has no attribute {name!r}")
