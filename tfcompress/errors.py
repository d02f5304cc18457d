"""The one error type user-facing failures raise.

Tools print `str(error)` on one line and exit non-zero; library code never
prints, never exits and never returns a sentinel.
"""


class TfcError(Exception):
    """A problem with the user's input (model, images, cache, flags).

    The message names the problem and the offending path or node on one line.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
