"""The Zarr store of a corpus: a local folder, or an fsspec URL whose failures name the corpus."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from hspace.files import is_url, reachable, storage_options, url_filesystem


def corpus_store(url: str, *, read_only: bool) -> Store:
    if is_url(url):
        url_filesystem(url)  # a missing backend (s3fs for s3://) is one line naming the extra to install
        return _Reachable(FsspecStore.from_url(url, storage_options=storage_options(url), read_only=read_only), url)
    return LocalStore(Path(url.removeprefix("file://")), read_only=read_only)


class _Reachable(WrapperStore[Store]):
    """A store on a URL whose connection failures, once retried (``hspace.files.storage_options``), are one line
    naming the corpus (``hspace.files.reachable``) instead of a transport error from inside Zarr."""

    def __init__(self, store: Store, url: str) -> None:
        super().__init__(store)
        self.url = url

    def _with_store(self, store: Store) -> _Reachable:
        return type(self)(store, self.url)


def _naming_url(name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def method(self: _Reachable, *args: Any, **kwargs: Any) -> Any:
        with reachable(self.url):
            return await getattr(self._store, name)(*args, **kwargs)

    return method


def _naming_url_in_iteration(name: str) -> Callable[..., AsyncIterator[Any]]:
    async def method(self: _Reachable, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        with reachable(self.url):
            async for item in getattr(self._store, name)(*args, **kwargs):
                yield item

    return method


# Every Store method that reaches the storage (WrapperStore's own ones pass each call on unchanged).
_READS = ("get", "get_partial_values", "exists", "getsize", "getsize_prefix", "is_empty")
for _name in (*_READS, "set", "set_if_not_exists", "_set_many", "delete", "delete_dir", "clear"):
    setattr(_Reachable, _name, _naming_url(_name))
for _name in ("_get_many", "list", "list_prefix", "list_dir"):
    setattr(_Reachable, _name, _naming_url_in_iteration(_name))
