"""Archives resolve to folders: extracted once into a content-addressed cache, never unsafely, never half."""

import io
import os
import tarfile

import pytest

from model.data import archives
from model.data.archives import resolve_dir
from model.errors import UserError


def _tar(path, members, mode="w:gz"):
    """Write a tar of (TarInfo, bytes or None) members."""
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"content"):
    return tarfile.TarInfo(name), data


def _entry(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def _all_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_folder_resolves_to_itself(tmp_path):
    assert resolve_dir(tmp_path, tmp_path / "cache") == tmp_path


def test_an_archive_with_one_top_folder_resolves_to_that_folder(tmp_path):
    archive = _tar(tmp_path / "images.tar.gz", [_entry("images", tarfile.DIRTYPE), _file("images/a.png"), _file("images/sub/b.png", b"b")])
    folder = resolve_dir(archive, tmp_path / "cache")
    assert folder.name == "images" and folder.parent.parent == tmp_path / "cache"
    assert _all_files(folder) == ["a.png", "sub", "sub/b.png"]
    assert (folder / "sub" / "b.png").read_bytes() == b"b"


@pytest.mark.parametrize("suffix, mode", [(".tar", "w"), (".tgz", "w:gz")])
def test_a_flat_archive_resolves_to_its_cache_folder(tmp_path, suffix, mode):
    archive = _tar(tmp_path / f"images{suffix}", [_file("a.png"), _file("b.png")], mode)
    folder = resolve_dir(archive, tmp_path / "cache")
    assert _all_files(folder) == ["a.png", "b.png"]


def test_an_extracted_archive_is_reused_and_named_by_its_content(tmp_path, monkeypatch):
    first = _tar(tmp_path / "one.tar.gz", [_file("a.png")])
    folder = resolve_dir(first, tmp_path / "cache")
    assert folder.name == archives._hash_file(first)
    with monkeypatch.context() as patch:
        patch.setattr(archives, "_extract", lambda *_: pytest.fail("a complete cache was extracted again"))
        patch.setattr(archives, "_hash_file", lambda *_: pytest.fail("an unchanged archive was hashed again"))
        assert resolve_dir(first, tmp_path / "cache") == folder
    copy = tmp_path / "copy.tar.gz"
    copy.write_bytes(first.read_bytes())  # same bytes under another name: same cache entry
    assert resolve_dir(copy, tmp_path / "cache") == folder


@pytest.mark.parametrize(
    "member, message",
    [
        (_file("../escaped.txt"), r"'\.\.'"),
        (_file("images/../../escaped.txt"), r"'\.\.'"),
        (_file("/tmp/escaped_absolute.txt"), "absolute path"),
        (_entry("images/link", tarfile.SYMTYPE, "../../escaped.txt"), "links are not allowed"),
        (_entry("images/hard", tarfile.LNKTYPE, "images/a.png"), "links are not allowed"),
        (_entry("images/fifo", tarfile.FIFOTYPE), "only files and folders"),
        (_entry("images/dev", tarfile.CHRTYPE), "only files and folders"),
    ],
)
def test_a_malicious_archive_is_refused_and_writes_nothing(tmp_path, member, message):
    source = tmp_path / "source"
    source.mkdir()
    archive = _tar(source / "evil.tar.gz", [_file("images/a.png"), member])
    cache = tmp_path / "work" / "cache"
    before = _all_files(tmp_path)
    with pytest.raises(UserError, match=message) as error:
        resolve_dir(archive, cache)
    assert str(archive) in str(error.value)
    outside_cache = [f for f in _all_files(tmp_path) if not f.startswith("work/cache/")]
    assert outside_cache == sorted(before + ["work", "work/cache"])
    assert all(p.name.startswith(archives._MEMO_MARK) for p in cache.iterdir())  # no member was extracted
    assert not os.path.exists("/tmp/escaped_absolute.txt")


def test_an_interrupted_extraction_leaves_no_cache_and_the_next_run_extracts_fully(tmp_path, monkeypatch):
    archive = _tar(tmp_path / "images.tar.gz", [_file("a.png"), _file("b.png")])
    cache = tmp_path / "cache"

    def crash_after_first_member(self, path, **kwargs):
        self.extract(self.getmembers()[0], path, filter="data")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(tarfile.TarFile, "extractall", crash_after_first_member)
        with pytest.raises(KeyboardInterrupt):
            resolve_dir(archive, cache)
    assert [p.name for p in cache.iterdir() if not p.name.startswith(archives._MEMO_MARK)] == []  # nothing put in place
    assert _all_files(resolve_dir(archive, cache)) == ["a.png", "b.png"]


def test_a_leftover_partial_folder_is_never_taken_for_the_cache(tmp_path):
    archive = _tar(tmp_path / "images.tar.gz", [_file("a.png"), _file("b.png")])
    cache = tmp_path / "cache"
    cache.mkdir()
    digest = archives._hash_file(archive)
    stale = cache / f"{digest}{archives._PARTIAL_MARK}killed"
    stale.mkdir()
    (stale / "a.png").write_bytes(b"half")
    folder = resolve_dir(archive, cache)
    assert folder == cache / digest
    assert _all_files(folder) == ["a.png", "b.png"]


def test_bad_paths_and_broken_archives_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder or archive"):
        resolve_dir(tmp_path / "missing.tar.gz", tmp_path / "cache")
    (tmp_path / "images.zip").write_bytes(b"PK")
    with pytest.raises(UserError, match=r"expected a folder or a \.tar"):
        resolve_dir(tmp_path / "images.zip", tmp_path / "cache")
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tar at all")
    with pytest.raises(UserError, match="not a readable tar archive"):
        resolve_dir(tmp_path / "broken.tar.gz", tmp_path / "cache")
    assert [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(archives._MEMO_MARK)] == []
