"""Writing files and folders so that a crash never leaves half of one: the one atomic writer and
the one staged-folder helper of cutlib (checkpoints, logs, eval.json, datasets, downloads).

A file is written to a temporary name beside it and renamed over the target (os.replace is atomic
on one file system). A folder is filled under a temporary name and renamed into place when
complete. Temporaries carry the writer's process id, so a later writer can tell the leftovers of a
killed process from those of a live one and removes only the former.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


class DiskFullError(OSError):
    """No space left on the device of a folder cutlib writes to."""


def _disk_full(err: BaseException, folder: Path) -> DiskFullError | None:
    """A DiskFullError naming ``folder`` when ``err`` says the disk is full (torch says it as 'unexpected pos')."""
    full = getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err) or "unexpected pos" in str(err)
    if not full:
        return None
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = -1
    return DiskFullError(errno.ENOSPC, f"no space left on the device of {folder} ({free} bytes free): free some space or "
                                       "write elsewhere, then run the same command again")


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    On any error the temporary is removed and ``path`` keeps its previous contents; a full disk is
    reported as DiskFullError naming the folder.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        full = _disk_full(err, path.parent) if isinstance(err, (OSError, RuntimeError)) else None
        if full is not None:
            raise full from err
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Remove the temporary folders of ``final`` (``.NAME.tmp-PID-*``) whose process is gone; returns them."""
    removed = []
    if not final.parent.is_dir():
        return removed
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        pid = tmp.name[len(f".{final.name}.tmp-"):].split("-")[0]
        if tmp.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def staged_folder(final: str | Path, fill: Callable[[Path], Path | None], keep_existing: bool = False) -> Path:
    """Make the folder ``final`` all at once: ``fill(tmp)`` fills a temporary folder beside it and may
    return a sub-folder of tmp to publish instead of tmp itself; that folder is renamed to ``final``.

    On any error nothing is left behind. ``keep_existing``: if another process published ``final``
    first, keep its folder and drop ours. Leftovers of killed writers are removed first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    except OSError as err:  # name the folder, not the temporary (a read-only disk)
        raise type(err)(err.errno, err.strerror, str(final.parent)) from err
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is a normal folder
    try:
        source = fill(tmp) or tmp
        try:
            os.rename(source, final)
        except OSError:
            if not (keep_existing and final.is_dir() and any(final.iterdir())):
                raise
    except DiskFullError:
        raise  # already says which folder (e.g. a download's own message)
    except (OSError, RuntimeError) as err:
        full = _disk_full(err, final.parent)
        if full is not None:
            raise full from err
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def append_text(path: str | Path, text: str) -> Path:
    """Append ``text`` to ``path`` (a log): all of it or nothing. A failed write (a full disk) is cut
    back to the file's previous end, so the log never ends in half a line; DiskFullError as above."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        data = text.encode()
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError as err:
            os.ftruncate(fd, start)
            full = _disk_full(err, path.parent)
            if full is not None:
                raise full from err
            raise
    finally:
        os.close(fd)
    return path


def remove_dead_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files atomic_write left in ``folder`` (``.NAME.PID.tmp``) when its process
    was killed (the PID is gone); returns them."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        pid = tmp.name[: -len(".tmp")].rsplit(".", 1)[-1]
        if tmp.is_file() and pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


class FolderBusy(RuntimeError):
    """Another live process holds the lock of a folder."""


class FolderLock:
    """An exclusive lock on a folder: the file FOLDER/NAME, which holds the holder's pid and host.

    The lock itself is an flock on that file, which the kernel drops when its process ends, so a
    lock file left by a killed process (a dead pid) is taken over by the next one. A second live
    process is refused with FolderBusy naming the holder. ``with FolderLock(folder):`` releases it
    (and removes the file) however the block ends.
    """

    def __init__(self, folder: str | Path, name: str = ".lock", what: str = "a process"):
        self.path = Path(folder) / name
        self.what = what
        self.fd: int | None = None

    def holder(self) -> dict:
        """{"pid": ..., "host": ...} written by the holder ({} when unreadable)."""
        import json

        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> FolderLock:
        import fcntl
        import json
        import socket

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                who = self.holder()
                raise FolderBusy(f"{self.path.parent} is in use by {self.what} (pid {who.get('pid', '?')} on host "
                                 f"{who.get('host', '?')}, lock file {self.path}): wait for it to end or choose "
                                 "another folder") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:  # the previous holder removed it between our open and our flock
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)  # a dead holder's pid is overwritten: taken over
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # before closing: a waiting process then makes a new file
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def locked_folder(folder: str | Path, name: str = ".lock", what: str = "another process"):
    """Hold FolderLock(folder) for the block: the folder is made if needed, dead writers' temporaries
    are removed, and a folder this made that is still empty at the end is removed again."""
    folder = Path(folder)
    check_folder_path(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with FolderLock(folder, name, what):
            remove_dead_temporaries(folder)
            yield folder
    finally:
        if made and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def check_folder_path(folder: str | Path) -> None:
    """NotADirectoryError naming the file when ``folder`` (or a folder above it) is a file."""
    folder = Path(folder)
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                where = "" if part == folder else f" (so {folder} cannot be made)"
                raise NotADirectoryError(f"{part} is a file, not a folder{where}: choose another folder")
            return


def describe_os_error(err: OSError) -> str:
    """One line for a file-system error: what failed on which path, and what to do."""
    if not err.filename:  # cutlib's own (DiskFullError, check_folder_path ...): already one clear line
        return err.strerror if isinstance(err, DiskFullError) else str(err)
    hint = {errno.EACCES: "make it writable or choose another folder", errno.EPERM: "make it writable or choose another folder",
            errno.EROFS: "choose a folder on a writable disk", errno.ENOENT: "check the path",
            errno.ENOTDIR: "choose a folder"}.get(err.errno, "check the path and its permissions")
    return f"{err.filename}: {err.strerror or type(err).__name__}; {hint}"
