"""Plug-ins other packages register with entry points: command-line sub-apps and document stores.

The core never imports an integration; it finds them here. Two entry-point groups:

- ``dual_encoder.cli``: a ``typer.Typer`` added to ``dual-encoder`` under the entry point's name
  (``dual-encoder NAME ...``);
- ``dual_encoder.stores``: a store factory, ``NAME = "package.module:factory"``, where ``factory(**options)``
  takes string options (``--store-option key=value`` on the command line) and returns a
  :class:`~dual_encoder.stores.Store`.

Example (a package's ``pyproject.toml``, then the core)::

    [project.entry-points."dual_encoder.stores"]
    mystore = "my_package.store:open_store"

    store = open_store("mystore", url="http://127.0.0.1:9000")
    print(store_names())          # ['mystore', ...]
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from dual_encoder.errors import ConfigurationError

if TYPE_CHECKING:
    import typer

    from dual_encoder.stores import Store

CLI_GROUP = "dual_encoder.cli"
STORE_GROUP = "dual_encoder.stores"

logger = logging.getLogger(__name__)


def _points(group: str) -> dict[str, EntryPoint]:
    return {point.name: point for point in entry_points(group=group)}


def cli_apps() -> dict[str, typer.Typer]:
    """Every registered command-line sub-app by name. One that fails to import is left out with a warning, so
    a broken plug-in never takes the core commands down with it."""
    apps = {}
    for name, point in sorted(_points(CLI_GROUP).items()):
        try:
            apps[name] = point.load()
        except Exception as error:  # an integration's import error is its own problem, not the core's
            logger.warning("The '%s' command plug-in (%s) could not be loaded: %s", name, point.value, error)
    return apps


def store_names() -> list[str]:
    """Names of the registered store factories."""
    return sorted(_points(STORE_GROUP))


def open_store(name: str, **options: str) -> Store:
    """The store a plug-in registers as ``name``, built from string ``options`` (``url``, ``collection``...).

    :raises ConfigurationError: no plug-in has that name (the message lists those that exist), or its package
        cannot be imported (the message says which).
    """
    points = _points(STORE_GROUP)
    if name not in points:
        known = ", ".join(sorted(points)) or "none installed"
        raise ConfigurationError(
            f"Unknown store type {name!r}; registered store plug-ins: {known}. A store plug-in is a package that "
            f"declares an entry point in the {STORE_GROUP!r} group: install the one that provides {name!r}."
        )
    try:
        factory = points[name].load()
    except ImportError as error:
        raise ConfigurationError(
            f"The {name!r} store plug-in ({points[name].value}) cannot be imported: {error}. Install its "
            f"dependencies (the extra that names it, e.g. pip install 'dual-encoder-retrieval[{name}]')."
        ) from error
    return factory(**options)


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    """``["key=value", ...]`` (repeated ``--store-option``) as a dict; a pair without ``=`` is refused."""
    options: dict[str, str] = {}
    for pair in pairs or []:
        key, separator, value = pair.partition("=")
        if not separator or not key.strip():
            raise ConfigurationError(f"Store options look like key=value, got {pair!r}.")
        options[key.strip()] = value
    return options
