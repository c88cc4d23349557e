"""The one exception type for user mistakes.

A ConfigError means "what you asked for cannot be done, and here is why": a bad configuration value,
a missing dataset, an impossible combination. Its message is a single line that names the bad value
and what is accepted. The CLI prints it and exits with status 2, never with a traceback.
"""


class ConfigError(ValueError):
    """A user mistake, explained in one line."""
