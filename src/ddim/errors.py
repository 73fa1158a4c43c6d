"""The one exception type for mistakes a user can fix (bad config, missing files, wrong checkpoint).

Entry points print its message and exit non-zero without a traceback; anything else is a bug and keeps
its traceback.
"""


class DDIMError(Exception):
    """A problem with the user's input or environment; the message says what to do."""


def user_error_in(exc: BaseException) -> DDIMError | None:
    """The DDIMError behind exc, if any: Hydra's instantiate wraps errors raised in constructors."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DDIMError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
