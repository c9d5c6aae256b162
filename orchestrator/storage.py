"""Where a sweep's Tune experiment and Parquet dataset live: a directory on a pyarrow filesystem.

By default that is the output directory on the driver's disk. The spec's `storage_uri`
(`s3://bucket/prefix`, `gs://bucket/prefix`, an NFS mount, any URI that
`pyarrow.fs.FileSystem.from_uri` opens) moves both to shared storage, so results outlive the
loss of any node:

    <storage_uri>/tune/      Ray Tune's experiment (what Tuner.restore reads)
    <storage_uri>/parquet/   trials/, milestones/, edits/: <trial_id>.parquet

Query parameters pass through to pyarrow, e.g. a local S3 server:
`s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http`. Credentials come from
pyarrow's usual chain (environment, ~/.aws, the instance profile), never from the spec.
"""

from __future__ import annotations

import functools
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from defer_core.errors import DeferInputError

# Filesystems whose top-level directory is a bucket that must exist before anything is written.
_BUCKET_STORES = ("s3", "gcs")


@dataclass(frozen=True, eq=False)
class Location:
    """A directory on a pyarrow filesystem; `path` as that filesystem spells it
    ("/abs/dir" locally, "bucket/prefix" on S3). Pickles without credentials."""

    filesystem: pafs.FileSystem
    path: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def child(self, *names: str) -> "Location":
        return Location(self.filesystem, "/".join([self.path.rstrip("/"), *names]))

    def __str__(self) -> str:
        return self.path if self.is_local else f"{self.filesystem.type_name}://{self.path}"


def local_location(path: str | os.PathLike[str]) -> Location:
    return Location(pafs.LocalFileSystem(), str(Path(path)))


def as_location(where: Location | str | os.PathLike[str]) -> Location:
    """A Location as given, or a local directory path as one."""
    return where if isinstance(where, Location) else local_location(where)


def one_line(error: BaseException) -> str:
    """An exception as one short line for a one-line error message (pyarrow's span several)."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]


def read_bytes(where: Location, name: str) -> bytes | None:
    """The whole file `name` in directory `where`, or None when there is none."""
    try:
        with where.filesystem.open_input_stream(where.child(name).path) as stream:
            return stream.read()
    except FileNotFoundError:
        return None


def write_bytes(where: Location, name: str, payload: bytes) -> None:
    """Replace file `name` in `where` whole: locally through a hidden temporary name and a
    rename, on an object store by one PUT (all-or-nothing), so a reader never sees half of it."""
    target = where.child(name).path
    if not where.is_local:
        with where.filesystem.open_output_stream(target) as stream:
            stream.write(payload)
        return
    where.filesystem.create_dir(where.path, recursive=True)
    tmp = where.child(f".{name}.tmp-{os.getpid()}").path
    with where.filesystem.open_output_stream(tmp) as stream:
        stream.write(payload)
    where.filesystem.move(tmp, target)


def delete_file(where: Location, name: str) -> None:
    """Remove file `name` in `where`; already gone is fine."""
    try:
        where.filesystem.delete_file(where.child(name).path)
    except FileNotFoundError:
        pass


def _offline_form(uri: str) -> str:
    """The URI as from_uri can parse it without the network: for S3 with neither a region nor
    an endpoint, from_uri asks AWS for the bucket's region; a placeholder region skips that."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != "s3" or {"region", "endpoint_override"} & set(urllib.parse.parse_qs(parts.query)):
        return uri
    return parts._replace(query="&".join(q for q in (parts.query, "region=us-east-1") if q)).geturl()


def normalize_storage_uri(uri: str) -> str:
    """The spec's storage_uri checked for form only (offline), as the sweep will store it: a
    plain path becomes absolute. Raises ValueError with a one-line reason."""
    if not urllib.parse.urlsplit(uri).scheme:
        return str(Path(uri).expanduser().resolve())
    try:
        filesystem, path = pafs.FileSystem.from_uri(_offline_form(uri))
    except (pa.ArrowException, OSError, ValueError) as error:
        raise ValueError(one_line(error)) from None
    if filesystem.type_name == "mock":
        raise ValueError("mock:// is an in-memory test filesystem; results would be lost")
    if not path.strip("/"):
        raise ValueError("it names no bucket or directory")
    return uri


@functools.lru_cache(maxsize=None)
def open_storage(uri: str) -> Location:
    """The shared-storage root named by a storage_uri, checked to be reachable (for S3 this
    asks the bucket's region unless the URI gives one or an endpoint). Cached per process."""
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        bucket = path.strip("/").split("/", 1)[0]
        if filesystem.type_name in _BUCKET_STORES and filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"bucket {bucket!r} does not exist")
        filesystem.get_file_info(path)  # credentials and list permission
    except (pa.ArrowException, OSError, ValueError) as error:
        raise DeferInputError(f"key 'storage_uri' = {uri!r}: cannot open it ({one_line(error)})") from None
    return Location(filesystem, path)
