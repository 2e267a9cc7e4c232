"""cutlib.data.download against a real HTTP server on 127.0.0.1 (with Range support) started here."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from cutlib.__main__ import main
from cutlib.data.download import (
    BadArchiveError,
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    download_archive,
    download_dataset,
    download_file,
)
from cutlib.data.cityscapes import prepare_cityscapes

FAST = dict(retries=2, backoff=0.0, timeout=5, progress=False)


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-`` when ``server.ranges``; may cut a reply short.

    ``server.range_from_zero`` ("from zero" or "absent"): answer a Range request with 206 but the
    bytes from 0, with a Content-Range that says so, or with none.
    """

    def do_GET(self):
        srv, path = self.server, self.path.split("?")[0]
        srv.log.append((path, self.headers.get("Range")))
        data = srv.files.get(path)
        if data is None:
            self.send_error(404)
            return
        start, header = 0, self.headers.get("Range")
        if header and srv.ranges:
            start = int(re.fullmatch(r"bytes=(\d+)-", header)[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            if srv.range_from_zero:
                start = 0
            self.send_response(206)
            if srv.range_from_zero != "absent":
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if path in srv.cut_once or path in srv.cut_always:  # announce all, send half, hang up
            srv.cut_once.discard(path)
            self.wfile.write(body[: len(body) // 2])
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.log, srv.ranges, srv.cut_once, srv.cut_always = {}, [], True, set(), set()
    srv.range_from_zero = None
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar_gz(members: dict[str, bytes], symlink: tuple[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink[0])
            info.type, info.linkname = tarfile.SYMTYPE, symlink[1]
            tf.addfile(info)
    return buf.getvalue()


def _toy_members(top: str = "toy/") -> dict[str, bytes]:
    return {f"{top}{split}/{i}.png": _png_bytes(hash((split, i)) % 1000) for split in ("trainA", "trainB", "testA", "testB") for i in range(2)}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------- good archives


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_good_archive_is_verified_extracted_unwrapped_and_tidy(server, tmp_path, kind):
    members = _toy_members()
    data = _zip(members) if kind == "zip" else _tar_gz(members)
    server.files[f"/toy.{kind}"] = data
    root = tmp_path / "data"
    dest = download_archive(f"{server.url}/toy.{kind}", root / "toy", sha256=_sha(data), **FAST)
    assert dest == root / "toy"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.png")) == sorted(m[4:] for m in members)
    assert (dest / "trainA" / "0.png").read_bytes() == members["toy/trainA/0.png"]
    assert [p.name for p in root.iterdir()] == ["toy"], "no archive, .part or temp folder may stay"
    calls = len(server.log)
    assert download_archive(f"{server.url}/toy.{kind}", root / "toy", **FAST) == dest
    assert len(server.log) == calls, "a finished dataset is not downloaded again"


def test_unknown_checksum_is_printed(server, tmp_path, capsys):
    data = _zip(_toy_members())
    server.files["/toy.zip"] = data
    download_archive(f"{server.url}/toy.zip", tmp_path / "toy", **FAST)
    assert _sha(data) in capsys.readouterr().out


def test_rearrange_builds_the_unaligned_layout(server, tmp_path):
    members = {f"afhq/{split}/{animal}/{i}.png": _png_bytes(i) for split in ("train", "val")
               for animal in ("cat", "dog", "wild") for i in range(2)}
    server.files["/afhq.zip"] = _zip(members)
    layout = {"trainA": "train/cat", "trainB": "train/dog", "testA": "val/cat", "testB": "val/dog"}
    dest = download_archive(f"{server.url}/afhq.zip?dl=1", tmp_path / "afhq_cat2dog", rearrange=layout, **FAST)
    assert sorted(p.name for p in dest.iterdir()) == ["testA", "testB", "trainA", "trainB"]
    assert (dest / "trainB" / "1.png").read_bytes() == members["afhq/train/dog/1.png"]


def test_files_entry_downloads_each_file_into_place(server, tmp_path):
    a, b = _png_bytes(1), _png_bytes(2)
    server.files.update({"/a.png": a, "/b.png": b})
    entry = {"name": "pair", "kind": "dataset", "url": None, "sha256": None, "files": [
        {"path": "trainA/a.png", "url": f"{server.url}/a.png", "sha256": _sha(a)},
        {"path": "trainB/b.png", "url": f"{server.url}/b.png", "sha256": _sha(b)}]}
    dest = download_dataset("pair", tmp_path, entry=entry, **FAST)
    assert (dest / "trainA" / "a.png").read_bytes() == a and (dest / "trainB" / "b.png").read_bytes() == b
    assert [p.name for p in tmp_path.iterdir()] == ["pair"]


# ---------------------------------------------------------------------------------------------- failures leave nothing


def test_wrong_checksum_raises_and_leaves_nothing(server, tmp_path):
    server.files["/toy.zip"] = _zip(_toy_members())
    with pytest.raises(ChecksumError, match="expected 0000"):
        download_archive(f"{server.url}/toy.zip", tmp_path / "toy", sha256="0" * 64, **FAST)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_cut_short_raises_and_leaves_nothing(server, tmp_path, kind):
    data = _zip(_toy_members()) if kind == "zip" else _tar_gz(_toy_members())
    server.files[f"/short.{kind}"] = data[: len(data) * 2 // 3]
    with pytest.raises(BadArchiveError, match="was deleted"):
        download_archive(f"{server.url}/short.{kind}", tmp_path / "toy", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_member_outside_the_target_is_refused(server, tmp_path):
    members = _toy_members()
    members["toy/../../evil.txt"] = b"gotcha"
    server.files["/evil.zip"] = _zip(members)
    root = tmp_path / "deep" / "data"
    with pytest.raises(UnsafeArchiveError, match="evil.txt"):
        download_archive(f"{server.url}/evil.zip", root / "toy", **FAST)
    assert list(root.iterdir()) == [] and not list(tmp_path.rglob("evil.txt"))


def test_links_in_tar_are_refused(server, tmp_path):
    server.files["/link.tar.gz"] = _tar_gz(_toy_members(), symlink=("toy/trainA/passwd", "/etc/passwd"))
    with pytest.raises(UnsafeArchiveError, match="link"):
        download_archive(f"{server.url}/link.tar.gz", tmp_path / "toy", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_offline_error_is_clear(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="offline"):
        download_archive(f"http://127.0.0.1:{port}/toy.zip", tmp_path / "toy", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_http_404_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{server.url}/missing.zip", tmp_path / "missing.zip", **FAST)
    assert len(server.log) == 1


# ---------------------------------------------------------------------------------------------- resume


def test_partial_file_is_resumed_with_a_range_request(server, tmp_path):
    data = bytes(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8))
    server.files["/big.bin"] = data
    (tmp_path / "big.bin.part").write_bytes(data[:120_000])
    path = download_file(f"{server.url}/big.bin", tmp_path / "big.bin", sha256=_sha(data), **FAST)
    assert path.read_bytes() == data
    assert server.log == [("/big.bin", "bytes=120000-")]
    assert not (tmp_path / "big.bin.part").exists()


def test_connection_cut_mid_transfer_resumes_on_retry(server, tmp_path):
    data = _zip(_toy_members())
    server.files["/toy.zip"] = data
    server.cut_once.add("/toy.zip")
    dest = download_archive(f"{server.url}/toy.zip", tmp_path / "toy", sha256=_sha(data), **FAST)
    assert (dest / "testB" / "1.png").is_file()
    assert server.log[0] == ("/toy.zip", None)
    assert server.log[1] == ("/toy.zip", f"bytes={len(data) // 2}-")


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    data = bytes(range(256)) * 100
    server.files["/plain.bin"] = data
    server.ranges = False
    (tmp_path / "plain.bin.part").write_bytes(b"garbage-that-must-go")
    path = download_file(f"{server.url}/plain.bin", tmp_path / "plain.bin", sha256=_sha(data), **FAST)
    assert path.read_bytes() == data


def test_failed_download_keeps_the_part_for_resuming(server, tmp_path):
    data = bytes(range(256)) * 400
    server.files["/flaky.bin"] = data
    server.ranges = False  # every reply restarts from 0 and is cut: the download cannot finish
    server.cut_always.add("/flaky.bin")
    with pytest.raises(DownloadError, match="run again to resume"):
        download_file(f"{server.url}/flaky.bin", tmp_path / "flaky.bin", **FAST)
    assert (tmp_path / "flaky.bin.part").stat().st_size == len(data) // 2
    assert not (tmp_path / "flaky.bin").exists()
    server.cut_always.clear()  # the server recovers: the next run resumes
    server.ranges = True
    download_file(f"{server.url}/flaky.bin", tmp_path / "flaky.bin", sha256=_sha(data), **FAST)
    assert server.log[-1][1] == f"bytes={len(data) // 2}-"


# ---------------------------------------------------------------------------------------------- command line


def test_cli_refuses_unknown_names_and_explains_cityscapes(capsys):
    with pytest.raises(SystemExit):
        main(["download", "no-such-dataset"])
    assert "horse2zebra" in capsys.readouterr().err
    assert main(["download", "cityscapes"]) == 1
    assert "prepare-cityscapes" in capsys.readouterr().out


def _fake_cityscapes(root):
    """A tiny tree in Cityscapes' folder and file-name convention, with real PNG files."""
    rng = np.random.default_rng(0)
    stems = {"train": ["aachen_000000_000019", "bochum_000000_000313"], "val": ["frankfurt_000000_000294"]}
    for phase, names in stems.items():
        for stem in names:
            city = stem.split("_")[0]
            ids = rng.choice([0, 7, 8, 11, 21, 23, 26], size=(16, 32)).astype(np.uint8)
            for sub, suffix, img in (
                ("gtFine", "gtFine_labelIds", ids),
                ("gtFine", "gtFine_color", rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)),
                ("leftImg8bit", "leftImg8bit", rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)),
            ):
                path = root / sub / phase / city / f"{stem}_{suffix}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(path)
    return stems


def test_prepare_cityscapes_writes_labels_to_photo_layout(tmp_path):
    stems = _fake_cityscapes(tmp_path / "cs")
    out = tmp_path / "data" / "cityscapes"
    assert main(["prepare-cityscapes", "--gtfine", str(tmp_path / "cs" / "gtFine"), "--leftimg",
                 str(tmp_path / "cs" / "leftImg8bit"), "--out", str(out), "--size", "24"]) == 0
    assert sorted(p.stem for p in (out / "trainA").iterdir()) == sorted(stems["train"])
    assert sorted(p.stem for p in (out / "testB").iterdir()) == stems["val"]
    stem = stems["train"][0]
    colour = np.asarray(Image.open(tmp_path / "cs" / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_color.png"))
    label_map = np.asarray(Image.open(out / "trainA" / f"{stem}.png"))
    assert label_map.shape == (24, 24, 3)
    assert {tuple(c) for c in label_map.reshape(-1, 3)} <= {tuple(c) for c in colour.reshape(-1, 3)}, "nearest resize keeps exact colours"
    assert Image.open(out / "trainB" / f"{stem}.jpg").size == (24, 24)
    ids = np.asarray(Image.open(tmp_path / "cs" / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png"))
    train_ids = np.asarray(Image.open(out / "trainA_labels" / f"{stem}.png"))
    expected = {0: 255, 7: 0, 8: 1, 11: 2, 21: 8, 23: 10, 26: 13}
    assert set(np.unique(train_ids)) <= set(expected.values())
    resized = np.asarray(Image.fromarray(ids).resize((24, 24), Image.Resampling.NEAREST))
    assert (train_ids == np.vectorize(expected.get)(resized)).all()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["cityscapes"]


def test_prepare_cityscapes_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="gtFine"):
        prepare_cityscapes(tmp_path / "nope", tmp_path / "nope2", tmp_path / "out")
    _fake_cityscapes(tmp_path / "cs")
    (tmp_path / "cs" / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000000_000294_leftImg8bit.png").unlink()
    with pytest.raises(FileNotFoundError, match="frankfurt_000000_000294"):
        prepare_cityscapes(tmp_path / "cs" / "gtFine", tmp_path / "cs" / "leftImg8bit", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_md5_from_a_third_party_is_checked_with_a_warning(server, tmp_path):
    data = b"some bytes"
    server.files["/f.bin"] = data
    download_file(f"{server.url}/f.bin", tmp_path / "ok.bin", md5=hashlib.md5(data).hexdigest(), **FAST)
    with pytest.warns(UserWarning, match="md5 differs"):
        path = download_file(f"{server.url}/f.bin", tmp_path / "other.bin", md5="0" * 32, **FAST)
    assert path.read_bytes() == data, "a third-party md5 only warns: the sha256 is the real check"


def test_proxy_settings_are_read_at_each_download(server, tmp_path, monkeypatch):
    """A download made while a (refusing) proxy was set must not poison later ones in the same
    process: urllib.request.urlopen caches the opener of its first call, proxies included."""
    server.files["/f.bin"] = b"x" * 100
    with monkeypatch.context() as m:
        for var in ("http_proxy", "HTTP_PROXY"):
            m.setenv(var, "http://127.0.0.1:9")
        m.delenv("no_proxy", raising=False)
        m.delenv("NO_PROXY", raising=False)
        with pytest.raises(DownloadError):
            download_archive(f"{server.url}/f.bin", tmp_path / "a" / "f.bin", extract=False, **FAST)
    path = download_archive(f"{server.url}/f.bin", tmp_path / "b" / "f.bin", extract=False, **FAST)
    assert path.read_bytes() == b"x" * 100
