"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""


class SevlmError(Exception):
    """A problem with the user's input or setup, with a message that says what and where."""


class DataError(SevlmError):
    """Bad input data: names the file and the row or sample at fault."""


class ConfigError(SevlmError):
    """A bad configuration value or override."""
