"""The one exception type users see: a message that names the problem and the fix."""


class BoomerangError(ValueError):
    """Bad input or an impossible request. The CLI prints the message and exits with status 2."""
