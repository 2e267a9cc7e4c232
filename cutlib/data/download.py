"""Downloads of the real datasets: resumable, checksummed, safely extracted, atomic.

``python -m cutlib download NAME [--root DIR]`` fetches a catalog entry (cutlib.data.catalog).
Only the standard library talks HTTP.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import http.client
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from cutlib.data.archives import BadArchiveError, IncompleteArchiveError, UnsafeArchiveError, safe_extract
from cutlib.files import DiskFullError, staged_folder
from cutlib.paths import data_root

CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """The file could not be downloaded: the server is unreachable or keeps failing, or the disk refuses it."""


class LocalWriteError(DownloadError):
    """The downloaded bytes cannot be written (read-only disk, no permission, ...): not retried."""


class ChecksumError(RuntimeError):
    """The downloaded bytes are not the ones the catalog expects."""


# ----------------------------------------------------------------------------------------------
# one file over HTTP


def file_hash(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _local_error(err: OSError, part: Path) -> DownloadError | DiskFullError:
    """The error to stop with when ``part`` (or its folder) cannot be written: says which folder and what to do."""
    folder = part.parent
    while not folder.is_dir() and folder != folder.parent:  # the folder to create: its nearest existing parent
        folder = folder.parent
    elsewhere = "download to another folder (python -m cutlib download NAME --root DIR, or CUTLIB_DATA=DIR)"
    size = part.stat().st_size if part.is_file() else 0
    kept = f"; the {size} bytes downloaded so far stay in {part} and resume" if size else ""
    if err.errno == errno.ENOSPC:
        free = shutil.disk_usage(folder).free
        return DiskFullError(errno.ENOSPC, f"no space left on the device of {folder} ({free} bytes free): free some "
                                           f"space or {elsewhere}, then run the same command again{kept}")
    if err.errno == errno.EROFS:
        what = f"{part.parent} is on a read-only file system"
    elif err.errno in (errno.EACCES, errno.EPERM):
        what = f"no permission to write in {part.parent}"
    else:
        what = f"cannot write {part} ({err.strerror or err})"
    return LocalWriteError(f"{what}: {elsewhere}, or fix the folder, then run the same command again{kept}")


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of ``Content-Range: bytes F-L/T`` (or ``bytes */T``); None for what it lacks."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header or "")
    first, total = match.groups() if match else (None, None)
    return (int(first) if first else None), (int(total) if total not in (None, "*") else None)


def _request(url: str, have: int, timeout: float):  # -> the response, from byte ``have`` on
    headers = {"User-Agent": "cutlib-downloader"}
    if have:
        headers["Range"] = f"bytes={have}-"
    # a fresh opener each time: urlopen() caches one built from the proxy settings of its first call
    return urllib.request.build_opener().open(urllib.request.Request(url, headers=headers), timeout=timeout)


def _restart(url: str, part: Path, message: str, warned: set[str]) -> None:
    if url not in warned:  # once per download, however many tries it takes
        warned.add(url)
        warnings.warn(f"{part.name[:-5]}: {message}; downloading it again from the start", stacklevel=4)


def _save(response, part: Path, start: int, total: int | None, progress: bool) -> None:
    """Write the body of ``response`` to ``part`` from byte ``start``; a local write error stops at once."""
    try:
        f = open(part, "ab" if start else "wb", buffering=0)  # unbuffered: every write error surfaces here
    except OSError as err:
        raise _local_error(err, part) from err
    with f, tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=part.name[:-5], disable=not progress) as bar:
        while chunk := response.read(CHUNK):  # a network error is raised here, and retried
            view = memoryview(chunk)
            try:
                while view:
                    view = view[f.write(view):]
            except OSError as err:
                raise _local_error(err, part) from err
            bar.update(len(chunk))


def _fetch(url: str, part: Path, timeout: float, progress: bool, warned: set[str]) -> None:
    """One attempt: append to ``part`` from where it stops (HTTP Range), or restart from 0 when the
    server ignores the range or answers it with bytes from elsewhere."""
    have = part.stat().st_size if part.exists() else 0
    while True:
        try:
            response = _request(url, have, timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # nothing left to fetch: the part file is complete, if its size is right
                _, size = _content_range(err.headers.get("Content-Range"))
                if size is None or size == have:
                    return
                _restart(url, part, f"the {have} bytes kept do not match the file's {size}", warned)
                have = 0
                continue
            raise
        with response:
            said = response.headers.get("Content-Range")
            first, total = _content_range(said)
            start = have if have and response.status == 206 else 0  # a 200 ignored the range: start again
            if start and first != have:
                said = f"Content-Range {said!r}" if said else "no Content-Range"
                _restart(url, part, f"asked to resume at byte {have}, the server answered with {said}", warned)
                if first != 0:  # bytes of an unknown place: ask again for the whole file
                    have = 0
                    continue
                start = 0
            length = response.headers.get("Content-Length")
            if total is None and length is not None:
                total = start + int(length)
            _save(response, part, start, total, progress)
        if total is not None and part.stat().st_size < total:
            raise http.client.IncompleteRead(b"", total - part.stat().st_size)
        return


def download_file(url: str, path: str | Path, sha256: str | None = None, md5: str | None = None,
                  retries: int = 4, backoff: float = 1.0, timeout: float = 30.0, progress: bool = True, *,
                  announce: bool = True) -> Path:
    """Download ``url`` to ``path`` through ``path.part`` (resumed on the next try), then verify it.

    A wrong sha256 deletes the file and raises; without one, the computed hash is printed (unless
    ``announce`` is False). After ``retries`` failed tries the partial file is kept so that running
    again resumes it. A file that cannot be written here (disk full, read-only, no permission)
    stops at once, keeping the bytes so far.
    """
    path = Path(path)
    part = path.with_name(path.name + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _local_error(err, part) from err
    if not path.exists():
        warned: set[str] = set()
        for attempt in range(retries + 1):
            try:
                _fetch(url, part, timeout, progress, warned)
                break
            except DiskFullError:
                raise
            except urllib.error.HTTPError as err:
                if 400 <= err.code < 500 and err.code not in (408, 429):
                    raise DownloadError(f"{url} answered HTTP {err.code} ({err.reason}): the address may have "
                                        "moved; check the catalog entry's source") from err
                failure = err
            except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
                failure = err
            if attempt < retries:
                time.sleep(backoff * 2**attempt)
        else:
            host = urllib.parse.urlparse(url).netloc
            kept = f"; {part.stat().st_size} bytes kept in {part}, run again to resume" if part.exists() else ""
            raise DownloadError(f"could not download {url} after {retries + 1} tries ({failure}). "
                                f"Are you offline, or is {host} down?{kept}. You can also fetch the file "
                                f"by hand and save it as {path}.") from failure
        try:
            part.rename(path)
        except OSError as err:
            raise _local_error(err, part) from err
    if sha256 is None and not announce:
        return path
    got = file_hash(path)
    if sha256 is not None and got != sha256.lower():
        path.unlink()
        raise ChecksumError(f"{url}: sha256 is {got}, expected {sha256}; the file was deleted. "
                            "The server may have changed it, or the download was corrupted: try again.")
    if sha256 is None:
        print(f"sha256 of {path.name}: {got} (not in the catalog yet: add it to the catalog, cutlib.data.catalog)")
    if md5 is not None and file_hash(path, "md5") != md5.lower():
        warnings.warn(f"{path.name}: md5 differs from the catalog's (third-party) value {md5}", stacklevel=2)
    return path


# ----------------------------------------------------------------------------------------------
# archives (reading them: cutlib.data.archives)


def _archive_name(url: str, dest: Path) -> str:
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    suffix = "".join(s for s in PurePosixPath(name).suffixes if s in (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz"))
    return f".{dest.name}{suffix or '.archive'}"


def download_archive(url: str, dest: str | Path, sha256: str | None = None, extract: bool = True, *,
                     md5: str | None = None, rearrange: dict[str, str] | None = None, keep_archive: bool = False,
                     retries: int = 4, backoff: float = 1.0, timeout: float = 30.0, progress: bool = True) -> Path:
    """Download ``url`` and extract it so that ``dest`` is the dataset folder (returned).

    The archive is extracted into a temporary folder renamed to ``dest`` only when complete; a
    single top-level folder is unwrapped. ``rearrange`` maps new sub-folders to archive folders
    (e.g. {"trainA": "train/cat"}). ``extract=False``: ``dest`` is the downloaded file itself.
    A bad checksum or a damaged archive leaves nothing behind; an archive cut short is kept as
    ``.part`` to be resumed; when extraction stops otherwise (a full disk, Ctrl-C) the verified
    archive stays, so that the next run only extracts it.
    """
    dest = Path(dest)
    if not extract:
        return download_file(url, dest, sha256, md5, retries, backoff, timeout, progress)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    archive = dest.parent / _archive_name(url, dest)
    download_file(url, archive, sha256, md5, retries, backoff, timeout, progress, announce=False)
    def fill(tmp: Path) -> Path:
        safe_extract(archive, tmp)
        entries = list(tmp.iterdir())
        src = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        if rearrange:
            arranged = tmp / ".arranged"
            arranged.mkdir()
            for new, old in rearrange.items():
                if not (src / old).is_dir():
                    raise FileNotFoundError(f"archive {url} has no folder {old!r} (expected for {new})")
                (src / old).rename(arranged / new)
            src = arranged
        return src

    _extract_keeping_what_is_good(archive, dest, fill)
    if sha256 is None:  # only now: the checksum of an archive that turned out cut short is never offered
        print(f"sha256 of {archive.name}: {file_hash(archive)} (not in the catalog yet: add it to the catalog, "
              "cutlib.data.catalog)")
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return dest


def _extract_keeping_what_is_good(archive: Path, dest: Path, fill) -> None:
    """staged_folder(dest, fill); a cut-short archive goes back to ``.part`` to be resumed, a damaged
    or unsafe one is deleted, and on anything else (a full disk, Ctrl-C) the complete archive stays."""
    try:
        staged_folder(dest, fill)
    except IncompleteArchiveError as err:
        part = archive.with_name(archive.name + ".part")
        archive.replace(part)
        raise IncompleteArchiveError(f"{err}; its bytes are kept in {part}: run the same command again to resume "
                                     f"the download (if this repeats, the server's file is itself incomplete: "
                                     f"delete {part} and tell the catalog's maintainers)") from err
    except (BadArchiveError, UnsafeArchiveError) as err:
        archive.unlink(missing_ok=True)
        again = ": run the same command again to download it anew" if isinstance(err, BadArchiveError) else ""
        raise type(err)(f"{err}; the archive {archive} was deleted{again}") from err
    except DiskFullError as err:
        raise DiskFullError(errno.ENOSPC, f"{err.strerror}; the downloaded archive {archive} is kept, so the "
                                          "next run only extracts it") from err
    except BaseException as err:
        err.add_note(f"the downloaded archive {archive} is kept: the next run only extracts it")
        raise


def download_dataset(name: str, root: str | Path | None = None, entry: dict | None = None, **kwargs) -> Path:
    """Fetch a catalog entry into ``root/name`` (default root: ``cutlib.paths.data_root()``).

    ``entry`` replaces the catalog's entry (e.g. a mirror, or a test server).
    """
    from cutlib.data.catalog import get_entry

    entry = entry or get_entry(name)
    dest = Path(root or data_root()) / name
    if entry["kind"] == "instructions":
        steps = "\n  ".join(entry.get("instructions", [entry["url"]]))
        raise DownloadError(f"{name} cannot be downloaded automatically ({entry['licence']}):\n  {steps}")
    if "files" in entry:  # loose files (e.g. the SinCUT pair): fetched into a temp folder, then renamed
        if dest.is_dir() and any(dest.iterdir()):
            return dest
        def fill(tmp: Path) -> None:
            for f in entry["files"]:
                download_file(f["url"], tmp / f["path"], f.get("sha256"), **kwargs)

        staged_folder(dest, fill)
        return dest
    return download_archive(entry["url"], dest, entry["sha256"], md5=entry.get("md5"),
                            rearrange=entry.get("rearrange"), **kwargs)


def cli(argv: list[str]) -> int:
    """``python -m cutlib download NAME [--root DIR]``: fetch a real dataset of the catalog."""
    from cutlib.data.catalog import load_catalog

    parser = argparse.ArgumentParser(prog="python -m cutlib download", description=cli.__doc__)
    parser.add_argument("name", help="catalog name (python -m cutlib datasets lists them)")
    parser.add_argument("--root", default=None, help="where datasets live (default: cutlib.paths.data_root())")
    parser.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive")
    args = parser.parse_args(argv)
    catalog = load_catalog()
    if args.name not in catalog:
        parser.error(f"unknown dataset {args.name!r}; choose from: {', '.join(sorted(catalog))}")
    entry = catalog[args.name]
    print(f"{args.name}: {entry.get('description', '')}\nlicence: {entry['licence']}\ncite: {entry['citation']}")
    try:
        extra = {"keep_archive": True} if args.keep_archive and "files" not in entry else {}
        path = download_dataset(args.name, args.root, **extra)
    except (DownloadError, ChecksumError, UnsafeArchiveError, BadArchiveError, DiskFullError) as err:
        print(f"error: {err.strerror if isinstance(err, DiskFullError) else err}")
        return 1
    print(f"ready: {path}")
    return 0
