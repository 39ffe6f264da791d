"""The one error type the example scripts report as a single line instead of a traceback."""


class ExampleError(Exception):
    """A problem with the user's input (data, flags, files): printed as one line, exit status 2."""
