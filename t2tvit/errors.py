"""Errors a user can cause. The CLI prints their message (one sentence naming the fix)
and exits with status 2 instead of showing a traceback."""


class T2TError(Exception):
    """Base class of user-facing errors."""


class ConfigError(T2TError, ValueError):
    """A bad model name, image size, class count or option value."""


class CheckpointError(T2TError, ValueError):
    """A checkpoint that is missing, unreadable, unsafe, or does not fit the model."""
