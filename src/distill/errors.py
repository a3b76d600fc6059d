"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class DistillError(Exception):
    """Something the user can fix (a bad config, a missing file, a wrong module name)."""


class ConfigError(DistillError):
    """A config field has a bad name, type or value."""
