"""Extracting a downloaded archive safely: zip or tar, no member outside the target folder, no links,
and a plain tar cut short is told apart from a complete one (its end-of-archive block is missing).
"""

from __future__ import annotations

import io
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

BLOCK = 512  # tar's block: an archive ends with two blocks of zeros


class UnsafeArchiveError(RuntimeError):
    """An archive member would land outside the target folder, or is a link."""


class BadArchiveError(RuntimeError):
    """The archive cannot be read (cut short, or not an archive at all)."""


class IncompleteArchiveError(BadArchiveError):
    """The archive ends early (a tar without its end-of-archive blocks): its bytes so far can be resumed."""


def _check_member(name: str, is_link: bool, target: Path) -> None:
    if is_link:
        raise UnsafeArchiveError(f"archive member {name!r} is a link; refusing to extract")
    posix = PurePosixPath(name.replace("\\", "/"))
    resolved = (target / posix).resolve()
    if posix.is_absolute() or ".." in posix.parts or not resolved.is_relative_to(target.resolve()):
        raise UnsafeArchiveError(f"archive member {name!r} would be written outside {target}; refusing to extract")


def safe_extract(archive: Path, target: Path) -> None:
    """Extract a zip or tar archive into ``target``, refusing links and paths that leave it."""
    try:
        # tar first: a plain tar holding .pth files (torch saves zips) also passes is_zipfile
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                try:
                    members = tf.getmembers()  # reads every header: a cut inside a member's data fails here
                except tarfile.ReadError:
                    _check_tar_end(tf, archive, read_all=False)
                    raise
                _check_tar_end(tf, archive)
                for m in members:
                    _check_member(m.name, m.issym() or m.islnk() or m.isdev(), target)
                tf.extractall(target, members=members, filter="data")
        elif zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                    _check_member(info.filename, is_link, target)
                zf.extractall(target)
        else:
            raise BadArchiveError(f"{archive.name} is neither a zip nor a tar archive (cut short, or an error page?)")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as err:
        raise BadArchiveError(f"{archive.name} is damaged ({err})") from err


def _check_tar_end(tf: tarfile.TarFile, archive: Path, read_all: bool = True) -> None:
    """A plain tar cut at a member boundary or in a header reads as a shorter, valid one: only its end block
    (zeros, right after the last member) tells; one cut in a member's data stops where that member should
    end. A compressed tar cut short fails in its decompressor instead (and is not resumed)."""
    if not isinstance(tf.fileobj, io.BufferedReader):
        return
    size = archive.stat().st_size
    tf.fileobj.seek(min(tf.offset, size))
    block = tf.fileobj.read(BLOCK) if read_all else b""
    if tf.offset > size or (read_all and len(block) < BLOCK):
        raise IncompleteArchiveError(f"{archive.name} is cut short: it stops at byte {size}, before the end "
                                     f"of the archive, after {len(tf.members)} whole members")
    if block.strip(b"\0"):  # tarfile stops quietly at a header it cannot read
        raise BadArchiveError(f"{archive.name} is damaged: unreadable header at byte {tf.offset}")
