"""Exceptions raised by the library. CLIs turn them into one error line and a non-zero exit."""


class Kp2dError(Exception):
    """Base class of every error the library raises on bad input."""


class ConfigError(Kp2dError, ValueError):
    """Unknown configuration key or invalid value (the message names the key)."""


class DataError(Kp2dError):
    """Missing/unreadable dataset, image, bag or topic."""


class ModelError(Kp2dError):
    """Missing, corrupt or mismatched network weights."""
