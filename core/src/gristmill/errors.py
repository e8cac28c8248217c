"""Errors gristmill raises on purpose.

Every error a user can cause derives from :class:`GristmillError`; the CLI prints its message
without a traceback and exits with status 2. Messages name the culprit (plugin, file, line, field)
and say how to fix it.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """``Type: the first line of its message`` (the type alone when it has none): how a library's
    exception is named inside a gristmill message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class GristmillError(Exception):
    """Base class of every error gristmill raises on purpose."""


class PluginError(GristmillError):
    """A plugin failed to load, registered something invalid, or clashes with another plugin."""


class UnknownComponentError(GristmillError, LookupError):
    """No installed plugin provides the component that was asked for."""


class OptionError(GristmillError, TypeError):
    """An option no component declares, or an argument of the wrong type or range; the message
    names the component or argument and what it takes."""


class MissingDependencyError(GristmillError, ImportError):
    """An optional library a component needs is not installed; says which extra installs it."""


class DataError(GristmillError):
    """A record in the input cannot be used; says where (file, line) and which field."""

    def __init__(self, message: str, *, where: str | None = None, field: str | None = None):
        self.where = where
        self.field = field
        self.reason = message
        parts = [where] if where else []
        if field:
            parts.append(f"field {field!r}")
        super().__init__(f"{': '.join(parts)}: {message}" if parts else message)

    def __reduce__(self) -> tuple[object, ...]:
        # Raised in a worker process, it crosses back by pickle with its location intact.
        return (_data_error, (type(self), self.reason, self.where, self.field))


def _data_error(
    cls: type[DataError], message: str, where: str | None, field: str | None
) -> DataError:
    return cls(message, where=where, field=field)


class FieldError(GristmillError):
    """Raised by a field mapper for one record; the pipeline adds the file and line.

    ``reason`` is a short key the skip policy counts by (with the field): ``missing-field``,
    ``wrong-type``, ``empty-field``.
    """

    def __init__(self, field: str | None, message: str, reason: str = "bad-field"):
        self.field = field
        self.reason = reason
        super().__init__(message)


class DatasetError(GristmillError):
    """A dataset directory is missing, incomplete, or not what the caller asked for.

    ``where`` (a directory, a file, a manifest key) and ``reason`` stay apart, so that a report
    that names the place itself (``gristmill verify``) does not repeat it.
    """

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        self.reason = message
        super().__init__(f"{where}: {message}" if where else message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_dataset_error, (type(self), self.reason, self.where))


def _dataset_error(cls: type[DatasetError], message: str, where: str | None) -> DatasetError:
    return cls(message, where=where)
