"""Errors a user can hit. Each message says what was wrong and what to do about it."""


class Zamba2VLError(Exception):
    """Base class of every error zamba2vl raises on bad input."""


class ConfigError(Zamba2VLError, ValueError):
    """A config.json that is missing, malformed or describes a model we do not run."""


class CheckpointError(Zamba2VLError, ValueError):
    """Weights that are missing, unexpected, mis-shaped or stored in a format we refuse to read."""


class ImageError(Zamba2VLError, ValueError):
    """An image that cannot be decoded, or whose size is unusable."""


class InputError(Zamba2VLError, ValueError):
    """A prompt or request that does not fit the model (too long, image/token mismatch, ...)."""
