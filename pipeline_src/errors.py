"""The one error type users see without a traceback: bad input, named precisely."""


class MedrefError(Exception):
    """Bad input or state. The message names the file/key and what is wrong."""
