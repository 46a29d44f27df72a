"""Errors caused by the user's config or input rather than by the code.

The command line reports these as one line without a traceback.
"""


class ConfigError(ValueError):
    """A config value is invalid or does not fit the data; the message names the option to change."""
