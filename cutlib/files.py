"""Writing files and folders so that a crash never leaves half of one: the one atomic writer and
the one staged-folder helper of cutlib (checkpoints, logs, eval.json, datasets, downloads).

A file is written to a temporary name beside it and renamed over the target (os.replace is atomic
on one file system). A folder is filled under a temporary name and renamed into place when
complete. Temporaries carry the writer's process id, so a later writer can tell the leftovers of a
killed process from those of a live one and removes only the former.
"""

from __future__ import annotations

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
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
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
