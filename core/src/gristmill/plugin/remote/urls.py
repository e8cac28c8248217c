"""Remote datasets' URLs: which paths are remote, the fsspec filesystem of one, and what a
failed request means (retry it, or stop and say what to do).

fsspec and its filesystems (s3fs, gcsfs, aiohttp for ``https://``) are optional: imported
when a remote path is first opened, never when gristmill is imported.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from typing import Any

from gristmill.errors import DatasetError, MissingDependencyError

SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
LOCAL = ("file", "local")  # schemes of the local filesystem: a plain path
USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@")

# The extra that installs each protocol's filesystem (pyproject's optional dependencies).
EXTRAS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "http": "remote",
    "https": "remote",
    "hf": "hf",  # huggingface_hub's filesystem, which brings fsspec
}
DENIED = (401, 403)  # HTTP statuses that no retry changes: the credentials are at fault
# Where an S3 client finds an endpoint of its own (a bucket outside AWS): part of a mirror's
# name, so that two servers' datasets of one URL never share a mirror.
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def scheme(path: str | os.PathLike[str]) -> str | None:
    """The URL scheme of ``path`` (``s3``, ``https``…), lower case; ``None`` for a plain path."""
    found = SCHEME.match(os.fspath(path)) if isinstance(path, str) else None
    return found.group(1).lower() if found else None


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a URL of a remote filesystem (``s3://``, ``gs://``, ``https://``, any
    fsspec knows), read through a local mirror; ``file://`` and plain paths are local."""
    found = scheme(path)
    return found is not None and found not in LOCAL


def redacted(url: str) -> str:
    """``url`` without the user name and password it may hold (``https://user:pass@host/``):
    what messages, logs and the cache folder name."""
    return USERINFO.sub(r"\1", url, count=1)


def local_path(path: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """``path`` as a local path: a ``file://`` URL's path, any other path as it is."""
    if scheme(path) in LOCAL:
        return SCHEME.sub("", os.fspath(path), count=1)
    return path


def filesystem(url: str, storage_options: Mapping[str, Any]) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path on it. A library that is not installed is a
    :class:`~gristmill.errors.MissingDependencyError` naming the extra that installs it."""
    protocol, shown = scheme(url) or "", redacted(url)
    install = f"pip install 'gristmill[{EXTRAS.get(protocol, 'remote')}]'"
    try:
        import fsspec
    except ImportError:
        raise MissingDependencyError(
            f"{shown}: reading a dataset from a URL needs fsspec; {install}"
        ) from None
    try:
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as error:
        raise MissingDependencyError(
            f"{shown}: the {protocol}:// filesystem needs a library that is not installed "
            f"({error}); {install}"
        ) from None
    except ValueError as error:  # a protocol fsspec does not know
        raise DatasetError(f"cannot read {protocol}:// URLs ({error})", where=shown) from None
    return fs, path


def endpoint(storage_options: Mapping[str, Any]) -> str:
    """The endpoint an S3 client would reach, where it is not AWS's own: from the storage
    options (``endpoint_url``, ``client_kwargs.endpoint_url``) or the environment."""
    client = storage_options.get("client_kwargs")
    chosen = storage_options.get("endpoint_url") or (
        client.get("endpoint_url") if isinstance(client, Mapping) else None
    )
    for name in ENDPOINT_VARIABLES:
        chosen = chosen or os.environ.get(name)
    return str(chosen or "")


def is_denied(error: BaseException) -> bool:
    """Whether ``error`` refuses access (403, 401, a ``PermissionError``): no retry helps."""
    if isinstance(error, PermissionError):
        return True
    status = getattr(error, "status", None) or getattr(error, "code", None)
    return status in DENIED


def is_missing(error: BaseException) -> bool:
    """Whether ``error`` says the object is not there (404): no retry helps."""
    return isinstance(error, FileNotFoundError) or getattr(error, "status", None) == 404


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` is a connection that did not open (no network, no such host, nothing
    listening): said as such once the retries are spent."""
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & {"ClientConnectorError", "EndpointConnectionError", "ConnectTimeoutError"}:
        return True
    return isinstance(error, OSError) and error.errno in (
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    )
