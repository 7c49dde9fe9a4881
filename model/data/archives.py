"""Image folders that may be shipped as tar archives: extracted once, safely, into a content-addressed cache.

`resolve_dir(path, cache_root)` gives a folder for a folder or a `.tar` / `.tar.gz` / `.tgz` file. An
archive is checked member by member before anything is written (no `..`, no absolute path, no link,
no device or fifo), extracted into a temporary folder beside its cache entry and renamed into place
only when complete, so an interrupted extraction is never mistaken for a cache.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from model.errors import UserError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_DIGEST_CHARS = 16  # hex characters of the archive's sha256 that name its cache folder
_PARTIAL_MARK = ".partial-"
_MEMO_MARK = ".digest-"


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


def _extract(path: Path, target: Path) -> None:
    """Extract the archive at `path` to the folder `target`, which appears complete or not at all."""
    partial = Path(tempfile.mkdtemp(prefix=target.name + _PARTIAL_MARK, dir=target.parent))
    try:
        try:
            with tarfile.open(path) as archive:
                _check_members(archive, path)
                archive.extractall(partial, filter="data")
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise UserError(f"{path}: not a readable tar archive ({e})") from None
        try:
            partial.rename(target)
        except OSError:
            if not target.is_dir():  # anything but another process having finished the same extraction first
                raise
    finally:
        if partial.exists():
            shutil.rmtree(partial)


def resolve_dir(path: str | Path, cache_root: str | Path) -> Path:
    """A folder with the content of `path`: `path` itself when it is a folder, else its extracted archive.

    Archives are extracted once into `cache_root/<sha256 prefix of the archive's bytes>/`; an archive
    holding a single top folder resolves to that folder.
    """
    path = Path(path)
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
