"""Object stores: a flat key -> bytes namespace with two backends.

``LocalFolderStore`` (the embedded default) keeps each object as a file under a root folder and replaces
files atomically, so a reader sees the old or the new bytes, never a mix. ``MinioStore`` talks to MinIO or
any S3 server through the ``minio`` SDK; its blocking calls run in worker threads. Keys are relative,
'/'-separated paths (``adapters/acme/bot/adapter.json``); ``list`` returns every key under a prefix, sorted.

Small objects (records, manifests) travel whole (``put``/``get``); large ones stream (``put_file`` from an
open file, ``get_pieces`` in bounded pieces), so memory does not grow with an object's size.

Conditional writes make the store itself the arbiter of races between replicas (DESIGN.md §11): every
object read by ``get_tagged`` carries an entity tag, ``put_if_absent`` creates only when nothing is there
(S3 ``If-None-Match: *``) and ``put_if_match`` replaces only the version that was read (S3 ``If-Match``). On
the local folder they are an exclusive hard link and a replace under an ``flock`` of the key's folder, which hold
across processes on one machine; a process that dies releases its lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import os
import re
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlparse

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from minio.helpers import check_bucket_name
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.common.settings import ENV_PREFIX, default_data_dir

#: Names of a key's parts: no empty parts, no '.'/'..', and no leading dot (the local store's temporaries).
_KEY_PART = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_MISSING_KEY_CODES = {"NoSuchKey", "NoSuchObject", "NoSuchBucket"}
#: What an S3 server answers when a conditional write's condition does not hold (or another one is racing).
_CONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}
#: Piece size of a streamed copy into the local store.
_COPY_BYTES = 1 << 20
#: Part size of a streamed S3 upload: the SDK holds one part in memory at a time (5 MiB is S3's minimum).
_S3_PART_BYTES = 5 << 20


@dataclasses.dataclass(frozen=True)
class Tagged:
    """An object's bytes and the entity tag that names exactly this content of the key."""

    data: bytes
    etag: str


class ObjectStore(Protocol):
    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing what was there; readers never see a partial object."""
        ...

    async def put_file(self, key: str, source: BinaryIO, size: int) -> None:
        """Store the next ``size`` bytes of ``source`` under ``key``, read in pieces; as atomic as ``put``."""
        ...

    async def get(self, key: str) -> bytes:
        """The object's bytes; raises ``errors.NotFound`` when there is none."""
        ...

    async def get_tagged(self, key: str) -> Tagged:
        """The object's bytes with its entity tag; raises ``errors.NotFound`` when there is none."""
        ...

    async def put_if_absent(self, key: str, data: bytes) -> str:
        """Create the object only if ``key`` holds none; its new tag, or ``errors.AlreadyExists``."""
        ...

    async def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        """Replace the object only if it still has tag ``etag``; its new tag, or ``errors.Aborted`` when
        another writer changed or removed it first."""
        ...

    def get_pieces(self, key: str, piece_bytes: int) -> AsyncIterator[bytes]:
        """The object's bytes in pieces of at most ``piece_bytes``; ``errors.NotFound`` (at the first
        ``anext``) when there is none."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def list(self, prefix: str, *, after: str = "") -> list[str]:
        """Every key starting with ``prefix`` (a plain string prefix, not only a folder), sorted; with
        ``after``, only the keys that sort after it (S3 lists from there, not from the prefix's start)."""
        ...

    async def list_written(self, prefix: str) -> dict[str, float]:
        """Every key starting with ``prefix`` and when it was last written (seconds since the epoch, by the
        store's clock): one listing instead of one read per key."""
        ...

    async def list_folders(self, folder: str, *, after: str = "", limit: int = 0) -> list[str]:
        """The names of the folders right under ``folder`` (which ends in '/', or is "" for the top) that
        hold objects, sorted, those after ``after`` only, at most ``limit`` of them (0: all). One S3 listing
        page per 1,000 folders, whatever the objects inside them."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; removing a missing one is not an error."""
        ...

    async def delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with ``prefix``."""
        ...


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or not all(_KEY_PART.fullmatch(p) for p in parts):
        raise InvalidArgument(f"invalid object key {key!r}")
    return key


def _check_prefix(prefix: str) -> str:
    # A prefix may end in '/' or in a partial name; everything before the last '/' must be a valid key.
    head, _, _ = prefix.rpartition("/")
    if prefix.startswith("/") or ".." in prefix or (head and check_key(head) != head):
        raise InvalidArgument(f"invalid object key prefix {prefix!r}")
    return prefix


def _check_folder(folder: str) -> str:
    if folder and (not folder.endswith("/") or check_key(folder[:-1]) != folder[:-1]):
        raise InvalidArgument(f"invalid object folder {folder!r}: a key prefix ending in '/'")
    return folder


class LocalFolderStore:
    """Objects as files under ``root``. Writes go to a hidden temporary file beside the target, are
    flushed to disk, then renamed over it (``os.replace`` is atomic on one file system)."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root.expanduser().resolve()
        self._fsync = fsync

    def __repr__(self) -> str:
        return f"LocalFolderStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, self._path(key), data)

    async def put_file(self, key: str, source: BinaryIO, size: int) -> None:
        await asyncio.to_thread(self._put, self._path(key), source, size)

    def _put(self, path: Path, data: bytes | BinaryIO, size: int | None = None, *, exclusive: bool = False) -> None:
        """Write a hidden temporary beside ``path``, then publish it: replace what is there, or with
        ``exclusive`` only create (``FileExistsError`` when ``path`` exists)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                if isinstance(data, bytes):
                    handle.write(data)
                else:
                    _copy(data, handle, size or 0)
                if self._fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            if exclusive:
                # A hard link never replaces: of racing creators, exactly one link succeeds.
                os.link(tmp, path)
                os.unlink(tmp)
            else:
                os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self._fsync:
            _fsync_dir(path.parent)

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"no object {key!r}") from None

    async def get_tagged(self, key: str) -> Tagged:
        data = await self.get(key)
        return Tagged(data, _content_tag(data))

    async def put_if_absent(self, key: str, data: bytes) -> str:
        return await asyncio.to_thread(self._put_if_absent, self._path(key), data)

    def _put_if_absent(self, path: Path, data: bytes) -> str:
        try:
            self._put(path, data, exclusive=True)
        except FileExistsError:
            raise AlreadyExists(f"object {path.relative_to(self.root).as_posix()!r} already exists") from None
        return _content_tag(data)

    async def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        return await asyncio.to_thread(self._put_if_match, key, self._path(key), data, etag)

    def _put_if_match(self, key: str, path: Path, data: bytes, etag: str) -> str:
        with self._key_lock(path):
            try:
                current = _content_tag(path.read_bytes())
            except FileNotFoundError:
                raise Aborted(f"object {key!r} was removed since it was read") from None
            if current != etag:
                raise Aborted(f"object {key!r} changed since it was read")
            self._put(path, data)
        return _content_tag(data)

    @contextlib.contextmanager
    def _key_lock(self, path: Path) -> Iterator[None]:
        """An exclusive ``flock`` of the key's folder across every process that opens this store: the check
        and the replace of ``put_if_match`` happen under it, and so does every delete. The folder itself is
        locked, not a lock file beside the key, so nothing is left behind when the key goes."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    async def get_pieces(self, key: str, piece_bytes: int) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"no object {key!r}") from None
        try:
            while piece := await asyncio.to_thread(handle.read, piece_bytes):
                yield piece
        finally:
            handle.close()

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def list(self, prefix: str, *, after: str = "") -> list[str]:
        keys = await asyncio.to_thread(self._list, _check_prefix(prefix))
        return [key for key in keys if key > after] if after else keys

    def _list(self, prefix: str) -> list[str]:
        base = self.root / prefix.rpartition("/")[0]
        keys = []
        for folder, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = Path(folder).relative_to(self.root).as_posix()
            for name in files:
                key = name if rel == "." else f"{rel}/{name}"
                if not name.startswith(".") and key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    async def list_written(self, prefix: str) -> dict[str, float]:
        return await asyncio.to_thread(self._list_written, _check_prefix(prefix))

    def _list_written(self, prefix: str) -> dict[str, float]:
        written = {}
        for key in self._list(prefix):
            with contextlib.suppress(FileNotFoundError):  # deleted since the listing
                written[key] = (self.root / key).stat().st_mtime
        return written

    async def list_folders(self, folder: str, *, after: str = "", limit: int = 0) -> list[str]:
        return await asyncio.to_thread(self._list_folders, _check_folder(folder), after, limit)

    def _list_folders(self, folder: str, after: str, limit: int) -> list[str]:
        try:
            entries = list(os.scandir(self.root / folder))
        except FileNotFoundError:
            return []
        # A folder a delete emptied may linger on disk; like S3, only folders holding objects count.
        names = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith(".") and e.name > after)
        found = []
        for name in names:
            if _holds_files(self.root / folder / name):
                found.append(name)
                if len(found) == limit:
                    break
        return found

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, self._path(key))

    def _delete(self, path: Path) -> None:
        if not path.parent.is_dir():
            return
        with self._key_lock(path):
            path.unlink(missing_ok=True)

    async def delete_prefix(self, prefix: str) -> None:
        await asyncio.to_thread(self._delete_prefix, _check_prefix(prefix))

    def _delete_prefix(self, prefix: str) -> None:
        if prefix.endswith("/"):
            # A whole folder: also takes temporaries a killed writer left behind.
            shutil.rmtree(self.root / prefix, ignore_errors=True)
            return
        for key in self._list(prefix):
            (self.root / key).unlink(missing_ok=True)


def _holds_files(path: Path) -> bool:
    """Whether a folder holds an object at any depth (hidden temporaries do not count); stops at the first."""
    for _, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(not name.startswith(".") for name in files):
            return True
    return False


def _content_tag(data: bytes) -> str:
    """The local store's entity tag: the content's SHA-256, so equal tags mean equal bytes."""
    return hashlib.sha256(data).hexdigest()


def _copy(source: BinaryIO, target: BinaryIO, size: int) -> None:
    """Exactly ``size`` bytes from ``source`` to ``target``, a bounded piece at a time."""
    left = size
    while left:
        piece = source.read(min(left, _COPY_BYTES))
        if not piece:
            raise ValueError(f"source ended {left} bytes before the {size} bytes to store")
        target.write(piece)
        left -= len(piece)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MinioStore:
    """Objects in one bucket (under an optional key prefix) of MinIO or another S3 server.

    The bucket is created on first use if it is missing. Connection failures become ``errors.Unavailable``.
    """

    def __init__(self, client: Minio, bucket: str, prefix: str = "") -> None:
        self._client = client
        self.bucket = bucket
        self._prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MinioStore(bucket={self.bucket!r}, prefix={self._prefix!r})"

    async def _call(self, fn, *args, **kwargs):
        return await asyncio.to_thread(self._in_thread, fn, *args, **kwargs)

    def _in_thread(self, fn, *args, **kwargs):
        try:
            self._ensure_bucket()
            return fn(*args, **kwargs)
        except S3Error as exc:
            if exc.code in _CONDITION_CODES:
                raise Aborted(f"object {exc.object_name or ''!r}: the condition of the write did not hold") from None
            if exc.code in _MISSING_KEY_CODES:
                raise NotFound(f"no object {exc.object_name or ''!r} in bucket {self.bucket!r}") from None
            raise
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"S3 server unreachable: {exc}") from exc

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if not self._bucket_ready:
                if not self._client.bucket_exists(self.bucket):
                    with contextlib.suppress(S3Error):  # another process may create it at the same time
                        self._client.make_bucket(self.bucket)
                self._bucket_ready = True

    async def put(self, key: str, data: bytes) -> None:
        name = self._prefix + check_key(key)
        await self._call(self._client.put_object, self.bucket, name, io.BytesIO(data), len(data))

    async def put_file(self, key: str, source: BinaryIO, size: int) -> None:
        name = self._prefix + check_key(key)
        await self._call(self._client.put_object, self.bucket, name, source, size, part_size=_S3_PART_BYTES)

    async def get(self, key: str) -> bytes:
        return (await self.get_tagged(key)).data

    async def get_tagged(self, key: str) -> Tagged:
        return await self._call(self._get_tagged, self._prefix + check_key(key))

    def _get_tagged(self, name: str) -> Tagged:
        response = self._client.get_object(self.bucket, name)
        try:
            return Tagged(response.read(), response.headers.get("ETag", "").strip('"'))
        finally:
            response.close()
            response.release_conn()

    async def put_if_absent(self, key: str, data: bytes) -> str:
        try:
            return await self._conditional_put(key, data, {"If-None-Match": "*"})
        except Aborted:
            raise AlreadyExists(f"object {key!r} already exists") from None

    async def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        try:
            return await self._conditional_put(key, data, {"If-Match": f'"{etag}"'})
        except NotFound:
            raise Aborted(f"object {key!r} was removed since it was read") from None
        except Aborted:
            raise Aborted(f"object {key!r} changed since it was read") from None

    async def _conditional_put(self, key: str, data: bytes, condition: dict[str, str]) -> str:
        # The SDK's public put_object turns unknown headers into user metadata (x-amz-meta-*), so a
        # conditional header would be stored instead of obeyed; its single-request PUT sends them as given.
        name = self._prefix + check_key(key)
        result = await self._call(self._client._put_object, self.bucket, name, data, condition)
        return result.etag

    async def get_pieces(self, key: str, piece_bytes: int) -> AsyncIterator[bytes]:
        response = await self._call(self._client.get_object, self.bucket, self._prefix + check_key(key))
        try:
            while piece := await self._call(response.read, piece_bytes):
                yield piece
        finally:
            response.close()
            response.release_conn()

    async def exists(self, key: str) -> bool:
        try:
            await self._call(self._client.stat_object, self.bucket, self._prefix + check_key(key))
        except NotFound:
            return False
        return True

    async def list(self, prefix: str, *, after: str = "") -> list[str]:
        start = self._prefix + after if after else None
        return await self._call(self._list, self._prefix + _check_prefix(prefix), start)

    def _list(self, prefix: str, start: str | None = None) -> list[str]:
        objects = self._client.list_objects(self.bucket, prefix=prefix, recursive=True, start_after=start)
        return sorted(o.object_name[len(self._prefix) :] for o in objects if not o.is_dir)

    async def list_written(self, prefix: str) -> dict[str, float]:
        return await self._call(self._list_written, self._prefix + _check_prefix(prefix))

    def _list_written(self, prefix: str) -> dict[str, float]:
        objects = self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
        return {o.object_name[len(self._prefix) :]: o.last_modified.timestamp() for o in objects if not o.is_dir}

    async def list_folders(self, folder: str, *, after: str = "", limit: int = 0) -> list[str]:
        return await self._call(self._list_folders, self._prefix + _check_folder(folder), after, limit)

    def _list_folders(self, folder: str, after: str, limit: int) -> list[str]:
        start = f"{folder}{after}/" if after else None
        found = []
        # Not recursive: S3 answers the folders as common prefixes, a page per 1,000 of them.
        for entry in self._client.list_objects(self.bucket, prefix=folder, start_after=start):
            name = entry.object_name[len(folder) :].rstrip("/")
            if entry.is_dir and name > after:
                found.append(name)
                if len(found) == limit:
                    break
        return found

    async def delete(self, key: str) -> None:
        await self._call(self._client.remove_object, self.bucket, self._prefix + check_key(key))

    async def delete_prefix(self, prefix: str) -> None:
        await self._call(self._delete_prefix, self._prefix + _check_prefix(prefix))

    def _delete_prefix(self, prefix: str) -> None:
        objects = self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
        doomed = [DeleteObject(o.object_name) for o in objects if not o.is_dir]
        if not doomed:
            return
        failures = list(self._client.remove_objects(self.bucket, doomed))  # lazy: errors only when iterated
        if failures:
            raise Unavailable(f"could not delete {len(failures)} objects under {prefix!r}: {failures[0]}")


class ObjectStoreSettings(BaseSettings):
    """Where objects live. Mixed into the settings of every service that opens an object store."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    store_url: str = Field(
        default_factory=lambda: str(default_data_dir() / "store"),
        description="A folder path or file:///path (local folder store), or s3://bucket[/prefix] (MinIO/S3).",
    )
    s3_endpoint: str = Field(
        "",
        description="S3 server as host:port or http(s)://host:port; required for s3:// store URLs.",
    )
    s3_access_key: SecretStr = Field(SecretStr(""), description="S3 access key.")
    s3_secret_key: SecretStr = Field(SecretStr(""), description="S3 secret key.")
    s3_secure: bool = Field(False, description="Use TLS to the S3 server (implied by an https:// endpoint).")
    s3_region: str = Field("", description="S3 region; empty lets the SDK ask the server.")
    s3_timeout_s: float = Field(30.0, gt=0, description="Connect and read timeout of each S3 request.")
    s3_retries: int = Field(3, ge=0, le=10, description="Retries of a failed S3 request (connection errors, 5xx).")
    store_fsync: bool = Field(
        True, description="Local folder store: flush each object to disk before it becomes visible."
    )


def store_secrets(settings: ObjectStoreSettings) -> dict[str, str]:
    """The S3 credentials, by field name, when the store is S3 (a local folder needs none)."""
    if urlparse(settings.store_url).scheme != "s3":
        return {}
    return {
        "s3_access_key": settings.s3_access_key.get_secret_value(),
        "s3_secret_key": settings.s3_secret_key.get_secret_value(),
    }


def open_object_store(settings: ObjectStoreSettings) -> ObjectStore:
    """The backend ``settings.store_url`` names. Opens no connection yet."""
    url = urlparse(settings.store_url)
    if url.scheme == "s3":
        return _open_minio(settings, bucket=url.netloc, prefix=url.path)
    if url.scheme in ("", "file"):
        return LocalFolderStore(Path(url.path if url.scheme else settings.store_url), fsync=settings.store_fsync)
    raise InvalidArgument(f"CLAAS_STORE_URL: unsupported scheme {url.scheme!r} (use a path, file:// or s3://)")


def _open_minio(settings: ObjectStoreSettings, *, bucket: str, prefix: str) -> MinioStore:
    try:
        check_bucket_name(bucket)
    except ValueError:
        raise InvalidArgument(f"CLAAS_STORE_URL {settings.store_url!r}: invalid bucket name {bucket!r}") from None
    if not settings.s3_endpoint:
        raise FailedPrecondition("CLAAS_S3_ENDPOINT is required with an s3:// CLAAS_STORE_URL")
    endpoint = urlparse(settings.s3_endpoint if "//" in settings.s3_endpoint else f"//{settings.s3_endpoint}")
    timeout = urllib3.Timeout(connect=settings.s3_timeout_s, read=settings.s3_timeout_s)
    retries = urllib3.Retry(total=settings.s3_retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504])
    client = Minio(
        endpoint.netloc,
        access_key=settings.s3_access_key.get_secret_value() or None,
        secret_key=settings.s3_secret_key.get_secret_value() or None,
        secure=settings.s3_secure or endpoint.scheme == "https",
        region=settings.s3_region or None,
        http_client=urllib3.PoolManager(
            timeout=timeout,
            retries=retries,
            maxsize=16,
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        ),
    )
    return MinioStore(client, bucket, prefix)
