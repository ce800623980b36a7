"""Import errors that say which extra to install, for packages built on an optional dependency.

A package that needs a library only one of the distribution's extras installs wraps its imports in
:func:`requires_extra`. When that library is missing, the bare ``No module named 'x'`` becomes a
:class:`ModuleNotFoundError` that names the distribution to install and the ``pip install`` line that installs
it. Any other import error (a missing submodule of an installed library, a bug) passes through unchanged.

Example::

    with requires_extra("some_library", package="some-library", extra="some", needed_by=__name__):
        from some_library import Thing
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dual_encoder import DISTRIBUTION


def missing_extra_message(module: str, *, package: str, extra: str, needed_by: str) -> str:
    """The message for ``needed_by`` failing to import because ``module`` (from the distribution ``package``,
    installed by ``extra``) is missing."""
    return (
        f"{needed_by} needs {package}, which is not installed (no module named {module!r}). Install it with: "
        f'pip install "{DISTRIBUTION}[{extra}]"'
    )


@contextmanager
def requires_extra(module: str, *, package: str, extra: str, needed_by: str) -> Iterator[None]:
    """Run the imports in the ``with`` block; if they fail because the top-level module ``module`` is missing,
    raise :class:`ModuleNotFoundError` whose message names ``package`` and the fix
    ``pip install "dual-encoder-retrieval[<extra>]"`` (the original error is chained as its cause).

    :param module: the top-level import name of the optional library (``"yaml"`` for PyYAML).
    :param package: its distribution name on the package index (``"PyYAML"``).
    :param extra: the extra of this distribution that installs it.
    :param needed_by: what cannot be imported without it, as the user wrote it (usually ``__name__``).
    """
    try:
        yield
    except ModuleNotFoundError as error:
        if error.name != module:
            raise
        raise ModuleNotFoundError(
            missing_extra_message(module, package=package, extra=extra, needed_by=needed_by), name=module
        ) from error
