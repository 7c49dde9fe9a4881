"""Data that may be shipped as tar archives or kept in object storage: made local once, safely, in a cache.

`resolve_dir(path, cache_root)` gives a folder for a folder or a `.tar` / `.tar.gz` / `.tgz` file,
local or at an fsspec URI (`s3://bucket/images.tar.gz`, `s3://bucket/images/`); `resolve_file` gives
a local file for a file path or URI. Remote files and folders are downloaded once into
`cache_root/remote-<key>/`, the key hashing each object's name, size and ETag. An archive is
checked member by member before anything is written (no `..`, no absolute path, no link, no device
or fifo) and extracted into `cache_root/<sha256 prefix of its bytes>/`. Downloads and extractions
go to a temporary folder beside their cache entry, renamed into place only when complete, so an
interrupted one is never mistaken for a cache.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterator

from model.data.files import STORAGE_ERRORS, is_remote, redact, remote_filesystem, storage_error
from model.errors import UserError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_DIGEST_CHARS = 16  # hex characters of the archive's sha256 that name its cache folder
_PARTIAL_MARK = ".partial-"
_MEMO_MARK = ".digest-"
_REMOTE_MARK = "remote-"


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:_DIGEST_CHARS]


def _content_digest(path: Path, cache_root: Path) -> str:
    """The archive's sha256 prefix, remembered in cache_root per (path, size, mtime): an unchanged archive is read once."""
    stat = path.stat()
    identity = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
    memo = cache_root / f"{_MEMO_MARK}{hashlib.sha256(identity).hexdigest()[:_DIGEST_CHARS]}"
    if memo.is_file():
        return memo.read_text().strip()
    digest = _hash_file(path)
    written = memo.with_name(f"{memo.name}.{os.getpid()}")
    written.write_text(digest)
    os.replace(written, memo)  # atomic: a reader sees the whole digest or no memo
    return digest


def _check_members(archive: tarfile.TarFile, path: Path) -> None:
    """Raise a UserError, before anything is extracted, for a member that could write outside the target."""
    for member in archive.getmembers():
        if PureWindowsPath(member.name).anchor:  # "/x", "\\x" and "C:x" all have one
            raise UserError(f"{path}: refusing archive member {member.name!r} with an absolute path")
        if ".." in PurePosixPath(member.name).parts:
            raise UserError(f"{path}: refusing archive member {member.name!r} that points outside the archive ('..')")
        if member.issym() or member.islnk():
            raise UserError(f"{path}: refusing archive member {member.name!r}: links are not allowed in data archives")
        if not (member.isfile() or member.isdir()):
            raise UserError(f"{path}: refusing archive member {member.name!r}: only files and folders are allowed")


def _single_top_folder(folder: Path) -> Path:
    """`folder`'s only sub-folder when that is all it holds, else `folder` itself."""
    entries = list(folder.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


@contextlib.contextmanager
def _complete_or_absent(target: Path) -> Iterator[Path]:
    """A temporary folder beside `target` to fill; renamed to `target` only if the block completes."""
    partial = Path(tempfile.mkdtemp(prefix=target.name + _PARTIAL_MARK, dir=target.parent))
    try:
        yield partial
        try:
            partial.rename(target)
        except OSError:
            if not target.is_dir():  # anything but another process having finished the same work first
                raise
    finally:
        if partial.exists():
            shutil.rmtree(partial)


def _extract(path: Path, target: Path) -> None:
    """Extract the archive at `path` to the folder `target`, which appears complete or not at all."""
    with _complete_or_absent(target) as partial:
        try:
            with tarfile.open(path) as archive:
                _check_members(archive, path)
                archive.extractall(partial, filter="data")
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise UserError(f"{path}: not a readable tar archive ({e})") from None


def _remote_objects(fs, path: str) -> tuple[bool, dict[str, dict]]:
    """(whether `path` is a folder, {name relative to the folder, or the file's own name: its info})."""
    info = fs.info(path)
    if info["type"] != "directory":
        return False, {PurePosixPath(path).name: info}
    root = path.rstrip("/")
    found = fs.find(root, detail=True)
    return True, {PurePosixPath(name).relative_to(root).as_posix(): entry for name, entry in found.items()}


def _remote_key(location: str, objects: dict[str, dict]) -> str:
    """Hash of the location and each object's name, size and version (ETag, else modification time)."""
    versions = sorted((name, info.get("size"), str(info.get("ETag") or info.get("LastModified") or info.get("mtime"))) for name, info in objects.items())
    return hashlib.sha256(json.dumps([location, versions]).encode()).hexdigest()[:_DIGEST_CHARS]


def fetch(uri: str, cache_root: str | Path) -> Path:
    """A local copy of the file or folder at the fsspec URI `uri`, downloaded once into `cache_root`."""
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    fs, path = remote_filesystem(uri)
    try:
        is_folder, objects = _remote_objects(fs, path)
        if not objects:
            raise UserError(f"{redact(uri)}: empty folder")
        target = cache_root / f"{_REMOTE_MARK}{_remote_key(fs.unstrip_protocol(path.rstrip('/')), objects)}"
        if not target.is_dir():
            with _complete_or_absent(target) as partial:
                names = sorted(objects)
                sources = [f"{path.rstrip('/')}/{name}" if is_folder else path for name in names]
                for name in names:
                    (partial / name).parent.mkdir(parents=True, exist_ok=True)
                fs.get(sources, [str(partial / name) for name in names])
    except STORAGE_ERRORS as e:
        raise storage_error(uri, e) from None
    return target if is_folder else target / next(iter(objects))


def resolve_file(path: str | Path, cache_root: str | Path) -> Path:
    """A local file with the content of `path`: `path` itself, or its download when it is a URI."""
    return fetch(path, cache_root) if is_remote(path) else Path(path)


def resolve_dir(path: str | Path, cache_root: str | Path) -> Path:
    """A folder with the content of `path`: `path` itself when it is a folder, else its extracted archive.

    Archives are extracted once into `cache_root/<sha256 prefix of the archive's bytes>/`; an archive
    holding a single top folder resolves to that folder. A URI is downloaded first (see `fetch`).
    """
    path = resolve_file(path, cache_root)
    if path.is_dir():
        return path
    if not path.exists():
        raise UserError(f"{path}: no such folder or archive")
    if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise UserError(f"{path}: expected a folder or a {' / '.join(ARCHIVE_SUFFIXES)} archive")
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    target = cache_root / _content_digest(path, cache_root)
    if not target.is_dir():
        _extract(path, target)
    return _single_top_folder(target)
