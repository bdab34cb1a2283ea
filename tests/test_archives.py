"""`fileio.extract_archive`, the one archive extractor (imports, the CamVid download, the
in-browser runtime): zip and tar alike, member names checked, the size limit checked before
anything is written."""
import io
import tarfile
import zipfile

import pytest

from cgnet import fileio
from cgnet.fileio import ArchiveError, ArchiveTooLarge, extract_archive

FILES = {"top/a.txt": b"alpha" * 10, "top/sub/b.bin": bytes(range(256)) * 4, "c.txt": b""}


def write_zip(path, files):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def write_tar(path, files, mode="w:gz"):
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


WRITERS = {"zip": lambda p, f: write_zip(p / "x.zip", f), "tgz": lambda p, f: write_tar(p / "x.tgz", f),
           "tar": lambda p, f: write_tar(p / "x.tar", f, "w")}


@pytest.mark.parametrize("kind", WRITERS)
def test_every_file_round_trips(tmp_path, kind):
    archive = WRITERS[kind](tmp_path, FILES)
    (tmp_path / "out").mkdir()
    assert extract_archive(archive, tmp_path / "out") == list(FILES)
    for name, data in FILES.items():
        assert (tmp_path / "out" / name).read_bytes() == data


@pytest.mark.parametrize("kind", WRITERS)
def test_select_renames_and_skips(tmp_path, kind):
    archive = WRITERS[kind](tmp_path, FILES)
    (tmp_path / "out").mkdir()
    written = extract_archive(archive, tmp_path / "out", select={"top/sub/b.bin": "b.bin"}.get)
    assert written == ["b.bin"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.bin"]


@pytest.mark.parametrize("kind", WRITERS)
@pytest.mark.parametrize("bad", ["../evil.txt", "/abs.txt", "ok/../../evil.txt", "C:/evil.txt"])
def test_unsafe_names_are_refused_even_when_skipped(tmp_path, kind, bad):
    archive = WRITERS[kind](tmp_path, {"fine.txt": b"1", bad: b"2"})
    (tmp_path / "out").mkdir()
    with pytest.raises(ArchiveError) as raised:
        extract_archive(archive, tmp_path / "out", select={"fine.txt": "fine.txt"}.get, name="ARCHIVE")
    assert str(raised.value) == f"ARCHIVE: unsafe member path {bad!r} (absolute or with '..'); refusing to unpack"
    assert not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("kind", WRITERS)
def test_the_size_limit_is_checked_before_anything_is_written(tmp_path, kind, monkeypatch):
    archive = WRITERS[kind](tmp_path, FILES)
    total = sum(len(d) for d in FILES.values())
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ArchiveTooLarge) as raised:
        extract_archive(archive, out, limit=total - 1, name="A")
    assert str(raised.value) == f"A: unpacks to {total:,} bytes, more than {total - 1:,} (the limit given); " \
                                "refusing to unpack"
    assert not any(out.iterdir())
    assert extract_archive(archive, out, limit=total) == list(FILES)   # exactly the limit is allowed
    # the default limit is the free space of the folder it unpacks into
    monkeypatch.setattr(fileio, "free_space", lambda folder: total - 1 if folder == out / "again" else 1 << 40)
    (out / "again").mkdir()
    with pytest.raises(ArchiveTooLarge, match=r"\(the free space where it unpacks\)"):
        extract_archive(archive, out / "again")
    assert not any((out / "again").iterdir())


def test_a_zip_bomb_is_refused_from_its_directory(tmp_path):
    """100 MB of zeros compress to about 100 kB: refused from the sizes the zip records."""
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", bytes(100_000_000))
    assert archive.stat().st_size < 1_000_000
    (tmp_path / "out").mkdir()
    with pytest.raises(ArchiveTooLarge, match="unpacks to 100,000,000 bytes, more than 10,000,000"):
        extract_archive(archive, tmp_path / "out", limit=10_000_000)
    assert not any((tmp_path / "out").iterdir())


def test_not_an_archive(tmp_path):
    path = tmp_path / "x.zip"
    path.write_bytes(b"not an archive at all")
    (tmp_path / "out").mkdir()
    with pytest.raises(ArchiveError, match=r"^.*x\.zip: not a readable zip or tar archive \("):
        extract_archive(path, tmp_path / "out")
