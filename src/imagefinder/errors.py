"""The base of every error ImageFinder raises on purpose.

`except ImageFinderError` catches what a user can act on — a bad source, an unreadable
image, a missing model, a broken index, a refused URL — and nothing else: a KeyError or a
TypeError from ImageFinder is a bug and should surface as one. Each subclass keeps the
builtin base it had (ValueError, RuntimeError) so existing `except ValueError` callers work.
"""


class ImageFinderError(Exception):
    """Something wrong with an input, model or index; the message names it and says what to do."""
