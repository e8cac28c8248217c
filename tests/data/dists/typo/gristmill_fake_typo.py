"""A plugin that misspells a hook name."""

from gristmill import hookimpl


@hookimpl
def gristmill_sourcs():
    return []
