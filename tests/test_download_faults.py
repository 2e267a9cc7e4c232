"""cutlib.data.download when things go wrong: a cut-short tar, a full or read-only disk, a Ctrl-C
during extraction, a server that answers a resume with the wrong bytes, leftovers of killed runs.

Real HTTP servers on 127.0.0.1 (the one of test_download.py), real tmpfs mounts, real signals.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from cutlib.data.download import BadArchiveError, DownloadError, download_archive, download_file
from cutlib.files import DiskFullError
from test_download import FAST, _png_bytes, _sha, _toy_members, server  # noqa: F401 (server is a fixture)

REPO = Path(__file__).resolve().parents[1]


def _tar(members: dict[str, bytes]) -> bytes:
    """An uncompressed tar, as the authors' pretrained-models archive is."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _random(n: int, seed: int = 0) -> bytes:
    return bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8))


@pytest.fixture
def small_disk(tmp_path):
    """mount(size_kb) -> a fresh tmpfs of that size (root only); unmounted at the end of the test."""
    mounted = []

    def mount(size_kb: int) -> Path:
        if os.geteuid() != 0:
            pytest.skip("a full disk is simulated with a small tmpfs, and mounting one needs root")
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def _remount(point: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(point)], check=True)


# ---------------------------------------------------------------------------------------------- a cut-short tar


def _cut_points(data: bytes) -> dict[str, int]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = tf.getmembers()
        end = tf.offset  # where the end-of-archive blocks start
    return {"member boundary": members[-1].offset, "inside a header": members[-1].offset + 100,
            "inside a member's data": members[-1].offset_data + 10, "inside the end blocks": end + 300}


@pytest.mark.parametrize("where", ["member boundary", "inside a header", "inside a member's data", "inside the end blocks"])
def test_tar_cut_short_is_kept_and_resumed(server, tmp_path, capsys, where):
    data = _tar(_toy_members())
    cut = _cut_points(data)[where]
    server.files["/models.tar"] = data[:cut]  # the server itself sends a short file (and says so)
    root = tmp_path / "data"
    with pytest.raises(BadArchiveError, match="cut short.*run the same command again") as err:
        download_archive(f"{server.url}/models.tar", root / "toy", **FAST)
    assert "\n" not in str(err.value)
    assert not (root / "toy").exists(), "a dataset with a missing file must never be 'ready'"
    assert (root / ".toy.tar.part").read_bytes() == data[:cut], "the bytes so far are kept for resuming"
    assert _sha(data[:cut]) not in capsys.readouterr().out, "the checksum of a cut archive is never offered"
    server.files["/models.tar"] = data  # the server recovers: the next run resumes
    dest = download_archive(f"{server.url}/models.tar", root / "toy", **FAST)
    assert server.log[-1] == ("/models.tar", f"bytes={cut}-")
    assert len(list(dest.rglob("*.png"))) == len(_toy_members())
    assert _sha(data) in capsys.readouterr().out
    assert [p.name for p in root.iterdir()] == ["toy"]


def test_tar_with_a_lone_end_block_is_complete(server, tmp_path):
    """One zero block after the last member already proves that no member is missing."""
    data = _tar(_toy_members())
    end = _cut_points(data)["inside the end blocks"] - 300
    server.files["/models.tar"] = data[: end + 512]
    dest = download_archive(f"{server.url}/models.tar", tmp_path / "toy", **FAST)
    assert len(list(dest.rglob("*.png"))) == len(_toy_members())


def test_damaged_archive_is_deleted_and_the_error_says_so(server, tmp_path):
    server.files["/toy.zip"] = b"<html>not found</html>"
    with pytest.raises(BadArchiveError, match="was deleted"):
        download_archive(f"{server.url}/toy.zip", tmp_path / "toy", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_tar_with_a_garbled_header_is_damaged_not_short(server, tmp_path):
    data = bytearray(_tar(_toy_members()))
    boundary = _cut_points(bytes(data))["member boundary"]
    data[boundary:boundary + 512] = b"\xff" * 512  # tarfile alone would stop here quietly, one member short
    server.files["/toy.tar"] = bytes(data)
    with pytest.raises(BadArchiveError, match="unreadable header.*was deleted"):
        download_archive(f"{server.url}/toy.tar", tmp_path / "toy", **FAST)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- extraction stopped


def test_full_disk_during_extraction_keeps_the_archive(server, small_disk):
    disk = small_disk(512)
    data = _tar({"toy/trainA/big.bin": _random(300_000)})  # fits once (the archive), not twice
    server.files["/toy.tar"] = data
    with pytest.raises(DiskFullError, match=f"{disk}.*archive .* is kept") as err:
        download_archive(f"{server.url}/toy.tar", disk / "toy", sha256=_sha(data), **FAST)
    assert "\n" not in str(err.value)
    assert (disk / ".toy.tar").read_bytes() == data, "the complete, verified archive must stay"
    assert [p.name for p in disk.iterdir()] == [".toy.tar"], "only the half-extracted folder goes"
    _remount(disk, "size=2m")  # space freed: the next run extracts without downloading again
    calls = len(server.log)
    dest = download_archive(f"{server.url}/toy.tar", disk / "toy", sha256=_sha(data), **FAST)
    assert len(server.log) == calls
    assert (dest / "trainA" / "big.bin").stat().st_size == 300_000
    assert [p.name for p in disk.iterdir()] == ["toy"]


_INTERRUPTIBLE = """
import sys
from cutlib.data.download import download_archive
try:
    download_archive(sys.argv[1], sys.argv[2], retries=0, backoff=0.0, progress=False)
except KeyboardInterrupt:
    sys.exit(3)
"""


def _extracting(root: Path) -> bool:
    """True once a temporary folder of the dataset holds something (the extraction has begun)."""
    for tmp in root.glob(".toy.tmp-*"):
        try:
            if any(tmp.iterdir()):
                return True
        except FileNotFoundError:  # renamed or removed meanwhile
            pass
    return False


@pytest.mark.slow
def test_ctrl_c_during_extraction_keeps_the_archive(server, tmp_path):
    root = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    for n in (3000, 12000):  # many small members: extraction lasts long enough to be interrupted
        data = _tar({f"toy/trainA/{i}.txt": b"x" * 100 for i in range(n)})
        server.files["/toy.tar"] = data
        child = subprocess.Popen([sys.executable, "-c", _INTERRUPTIBLE, f"{server.url}/toy.tar", str(root / "toy")],
                                 env=env, stderr=subprocess.PIPE, text=True)
        while child.poll() is None and not _extracting(root):
            time.sleep(0.002)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
        if child.returncode == 3 and not (root / "toy").exists():
            break  # caught in the middle of extracting
        assert child.returncode in (0, 3), err
        shutil.rmtree(root)  # finished before the signal: try again with a bigger archive
    else:
        pytest.skip("extraction always finished before the signal arrived (a very fast disk)")
    assert (root / ".toy.tar").read_bytes() == data, "Ctrl-C must not delete the complete archive"
    assert [p.name for p in root.iterdir()] == [".toy.tar"], "the half-extracted folder goes"
    calls = len(server.log)
    dest = download_archive(f"{server.url}/toy.tar", root / "toy", **FAST)
    assert len(server.log) == calls, "the next run extracts the kept archive without downloading"
    assert len(list((dest / "trainA").iterdir())) == n


# ---------------------------------------------------------------------------------------------- local disk errors


def test_full_disk_while_downloading_stops_at_once(server, small_disk):
    disk = small_disk(128)
    data = _random(400_000)
    server.files["/big.bin"] = data
    start = time.monotonic()
    with pytest.raises(DiskFullError, match=f"no space left on the device of {disk}.*free some space") as err:
        download_file(f"{server.url}/big.bin", disk / "big.bin", retries=4, backoff=1.0, timeout=5, progress=False)
    assert time.monotonic() - start < 4 and len(server.log) == 1, "a full disk is not retried as a network error"
    assert "offline" not in str(err.value) and "\n" not in str(err.value)
    kept = (disk / "big.bin.part").read_bytes()
    assert 0 < len(kept) < len(data) and data.startswith(kept)
    _remount(disk, "size=2m")
    download_file(f"{server.url}/big.bin", disk / "big.bin", sha256=_sha(data), **FAST)
    assert server.log[-1] == ("/big.bin", f"bytes={len(kept)}-"), "the kept bytes resume"


def test_read_only_disk_stops_at_once(server, small_disk):
    disk = small_disk(64)
    (disk / "data").mkdir()
    _remount(disk, "ro")
    server.files["/f.bin"] = b"x" * 1000
    for target in (disk / "data" / "f.bin", disk / "new" / "f.bin"):  # an existing folder, and one to create
        with pytest.raises(DownloadError, match=f"{target.parent} is on a read-only file system.*--root") as err:
            download_file(f"{server.url}/f.bin", target, retries=4, backoff=1.0, timeout=5, progress=False)
        assert "offline" not in str(err.value)
    assert len(server.log) <= 1, "a read-only disk is not retried"


def _download_as_nobody(url: str, target: Path) -> tuple[int, str]:
    """download_file in a forked child that dropped root for the 'nobody' user: (exit code, message)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code, message = 4, ""
        try:
            os.setgid(65534)
            os.setuid(65534)
            download_file(url, target, retries=4, backoff=1.0, timeout=5, progress=False)
            code = 0
        except DownloadError as err:
            code, message = 3, str(err)
        except BaseException as err:  # noqa: BLE001 (reported to the parent)
            message = f"{type(err).__name__}: {err}"
        finally:
            os.write(write, message.encode())
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), message


def test_folder_without_write_permission_stops_at_once(server, tmp_path):
    server.files["/f.bin"] = b"x" * 1000
    if os.geteuid() == 0:  # root ignores permission bits: the download runs as 'nobody', in a folder of root's
        folder = Path(tempfile.gettempdir()) / f"cutlib-noperm-{os.getpid()}"
        folder.mkdir(mode=0o755)
        try:
            code, message = _download_as_nobody(f"{server.url}/f.bin", folder / "f.bin")
        finally:
            folder.rmdir()
    else:
        folder = tmp_path / "locked"
        folder.mkdir(mode=0o555)
        with pytest.raises(DownloadError) as err:
            download_file(f"{server.url}/f.bin", folder / "f.bin", retries=4, backoff=1.0, timeout=5, progress=False)
        code, message = 3, str(err.value)
        folder.chmod(0o755)
    assert code == 3, message
    assert f"no permission to write in {folder}" in message and "offline" not in message
    assert len(server.log) == 1, "a permission error is not retried"


# ---------------------------------------------------------------------------------------------- a wrong resume


@pytest.mark.parametrize("content_range", ["from zero", "absent"])
def test_resume_answered_from_byte_zero_restarts(server, tmp_path, capsys, recwarn, content_range):
    data = _random(200_000, seed=1)
    server.files["/big.bin"] = data
    server.range_from_zero = content_range  # 206, but the bytes start at 0
    (tmp_path / "big.bin.part").write_bytes(data[:50_000])
    path = download_file(f"{server.url}/big.bin", tmp_path / "big.bin", **FAST)
    assert path.read_bytes() == data, "the bytes of a wrong resume must not be appended"
    assert _sha(data) in capsys.readouterr().out
    warned = [w for w in recwarn if "from the start" in str(w.message)]
    assert len(warned) == 1, [str(w.message) for w in recwarn]


def test_part_longer_than_the_file_restarts(server, tmp_path, recwarn):
    data = _random(10_000, seed=2)
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(_random(12_000, seed=3))  # not this file: the server answers 416
    path = download_file(f"{server.url}/f.bin", tmp_path / "f.bin", **FAST)
    assert path.read_bytes() == data
    assert len([w for w in recwarn if "from the start" in str(w.message)]) == 1


# ---------------------------------------------------------------------------------------------- leftovers of killed runs


def test_leftover_temp_folders_of_dead_processes_go_at_the_next_download(server, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid now names no process
    root = tmp_path / "data"
    stale, live = root / f".toy.tmp-{dead.pid}-abc", root / f".toy.tmp-{os.getpid()}-xyz"
    for folder in (stale, live):
        (folder / "trainA").mkdir(parents=True)
        (folder / "trainA" / "half.png").write_bytes(_png_bytes(0))
    data = _tar(_toy_members())
    server.files["/toy.tar"] = data
    download_archive(f"{server.url}/toy.tar", root / "toy", sha256=_sha(data), **FAST)
    assert not stale.exists(), "a killed extraction's temporary folder is removed at the next start"
    assert (live / "trainA" / "half.png").is_file(), "a live process's temporary folder is left alone"
