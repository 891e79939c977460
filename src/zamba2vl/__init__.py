"""zamba2vl: Zyphra's Zamba2-VL vision-language models in pure PyTorch."""

__version__ = "0.1.0"

from zamba2vl.config import VisionConfig, Zamba2TextConfig, Zamba2VLConfig  # noqa: E402
from zamba2vl.errors import CheckpointError, ConfigError, ImageError, InputError, Zamba2VLError  # noqa: E402

__all__ = [
    "VisionConfig", "Zamba2TextConfig", "Zamba2VLConfig",
    "CheckpointError", "ConfigError", "ImageError", "InputError", "Zamba2VLError",
]


def __getattr__(name):  # lazy imports keep `import zamba2vl` cheap
    if name == "Zamba2LM":
        from zamba2vl.text.model import Zamba2LM
        return Zamba2LM
    raise AttributeError(name)
