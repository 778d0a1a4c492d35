"""The one exception type that the CLI turns into a single line on stderr and exit status 2."""


class HarnessError(Exception):
    """A user-facing error: bad config, unknown name, missing file or data.

    The message is one line and names the file and/or key path at fault.
    """

    exit_code = 2
