"""One exception type for every bad input the user can fix.

The CLI turns it into a one-line message and a non-zero exit; library code raises it with
the file, key or record that is wrong and what was expected.
"""


class DeferInputError(ValueError):
    """A config, data file, model path or module path that cannot be used as given."""
