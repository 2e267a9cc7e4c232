"""Downloads of the real datasets: resumable, checksummed, safely extracted, atomic.

``python -m cutlib download NAME [--root DIR]`` fetches a catalog entry (cutlib.data.catalog).
Only the standard library talks HTTP.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from cutlib.files import staged_folder
from cutlib.paths import data_root

CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """The server could not be reached, or kept failing."""


class ChecksumError(RuntimeError):
    """The downloaded bytes are not the ones the catalog expects."""


class UnsafeArchiveError(RuntimeError):
    """An archive member would land outside the target folder, or is a link."""


class BadArchiveError(RuntimeError):
    """The archive cannot be read (cut short, or not an archive at all)."""


# ----------------------------------------------------------------------------------------------
# one file over HTTP


def file_hash(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One attempt: append to ``part`` from where it stops (HTTP Range), or restart if unsupported."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "cutlib-downloader"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        # a fresh opener each time: urlopen() caches one built from the proxy settings of its first call
        response = urllib.request.build_opener().open(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to fetch: the part file is complete
            return
        raise
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored Range: start again
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=part.name[:-5], disable=not progress
        ) as bar:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size < total:
        raise http.client.IncompleteRead(b"", total - part.stat().st_size)


def download_file(url: str, path: str | Path, sha256: str | None = None, md5: str | None = None,
                  retries: int = 4, backoff: float = 1.0, timeout: float = 30.0, progress: bool = True) -> Path:
    """Download ``url`` to ``path`` through ``path.part`` (resumed on the next try), then verify it.

    A wrong sha256 deletes the file and raises; without one, the computed hash is printed.
    After ``retries`` failed tries the partial file is kept so that running again resumes it.
    """
    path = Path(path)
    part = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        for attempt in range(retries + 1):
            try:
                _fetch(url, part, timeout, progress)
                break
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
        part.rename(path)
    got = file_hash(path)
    if sha256 is not None and got != sha256.lower():
        path.unlink()
        raise ChecksumError(f"{url}: sha256 is {got}, expected {sha256}; the file was deleted. "
                            "The server may have changed it, or the download was corrupted: try again.")
    if sha256 is None:
        print(f"sha256 of {path.name}: {got} (not in the catalog yet: add it to data/catalog.json)")
    if md5 is not None and file_hash(path, "md5") != md5.lower():
        warnings.warn(f"{path.name}: md5 differs from the catalog's (third-party) value {md5}", stacklevel=2)
    return path


# ----------------------------------------------------------------------------------------------
# archives


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
                members = tf.getmembers()  # reads the whole archive: a cut-short one fails here
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
        raise BadArchiveError(f"{archive.name} is damaged ({err}); it was deleted, download it again") from err


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
    On a bad checksum or a bad archive nothing is left behind.
    """
    dest = Path(dest)
    if not extract:
        return download_file(url, dest, sha256, md5, retries, backoff, timeout, progress)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    archive = dest.parent / _archive_name(url, dest)
    download_file(url, archive, sha256, md5, retries, backoff, timeout, progress)
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

    try:
        staged_folder(dest, fill)
    except BaseException:
        archive.unlink(missing_ok=True)
        raise
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return dest


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
    except (DownloadError, ChecksumError, UnsafeArchiveError, BadArchiveError) as err:
        print(f"error: {err}")
        return 1
    print(f"ready: {path}")
    return 0
