"""Inference: translate_image on any size and in tiles, load_generator on every
checkpoint format (ours, epoch snapshots, the authors' layout, the downloaded pretrained archive),
and the translate command on real images."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from cutlib import config as C
from cutlib.__main__ import main
from cutlib.data import get_entry, list_images, load_image, make_dataset
from cutlib.data.download import download_dataset
from cutlib.images import to_tensor
from cutlib.networks import ResnetGenerator
from cutlib.pretrained import to_reference_state_dict
from cutlib.stylegan2 import StyleGAN2Generator
from cutlib.runs import CHECKPOINT, load_run
from cutlib.train import train
from cutlib.memory import TooLargeError, bytes_per_pixel, memory_limit, whole_image_bytes
from cutlib.translate import load_generator, output_paths, pad_to_multiple, translate_folder, translate_image

TINY = {k: v for k, v in C.TINY_SCALE.items() if k != "dataset"}  # the datasets come from fixtures


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny CUT run trained here: 4 steps = one epoch of the 4-image built-in set, snapshot kept."""
    root = tmp_path_factory.mktemp("translate")
    data = make_dataset("stripes", root=root / "data", size=40, n_train=4, n_test=2)
    train(C.preset("cut", dataset=str(data), max_steps=4, save_epoch_freq=1, **TINY), root / "run", progress=False)
    return root / "run"


def _image(h, w, seed=0):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _small_resnet(seed=0):
    torch.manual_seed(seed)
    return ResnetGenerator(ngf=4, n_blocks=1).eval()


# ----------------------------------------------------------------------------------------------- translate_image


def test_any_size_comes_back_at_its_own_size():
    G = _small_resnet()
    x = _image(32, 48)
    assert torch.equal(translate_image(G, x), G(x[None])[0])  # multiples of 4: no padding at all
    for h, w in ((37, 53), (3, 5), (1, 1)):
        y = translate_image(G, _image(h, w))
        assert y.shape == (3, h, w) and y.abs().max() <= 1
    batch = torch.stack([_image(37, 53, s) for s in range(2)])
    torch.testing.assert_close(translate_image(G, batch)[1], translate_image(G, batch[1]))


def test_padding_reflects_and_reaches_the_multiple():
    x = _image(37, 53)[None]
    p = pad_to_multiple(x)
    assert p.shape[-2:] == (40, 56)
    assert torch.equal(p[..., :37, :53], x)
    assert torch.equal(p[..., 37, :53], x[..., 35, :]) and torch.equal(p[..., :37, 53], x[..., :, 51])  # reflection
    assert pad_to_multiple(_image(3, 5)[None]).shape[-2:] == (8, 8)  # too small to reflect: replicated


def test_tiles_match_the_whole_image_without_instance_norm():
    """StyleGAN2 generator (no normalisation, noise gain 0 at init): tiled output close to the whole one,
    overlap blending better than butting tiles, and one tile covering the image is exact."""
    torch.manual_seed(0)
    G = StyleGAN2Generator(ngf=2).eval()
    x = torch.nn.functional.avg_pool2d(_image(96, 128)[None], 5, 1, 2)[0]  # a smoother "photo"
    whole = translate_image(G, x)
    assert torch.equal(translate_image(G, x, tile=128), whole)
    blended = translate_image(G, x, tile=48, overlap=16)
    butted = translate_image(G, x, tile=48, overlap=0)
    spread = (whole - whole.mean()).abs().mean()
    err_blended, err_butted = (blended - whole).abs().mean(), (butted - whole).abs().mean()
    assert err_blended < 0.1 * spread, (err_blended, spread)
    assert err_blended < err_butted
    # the interior of a tile, far from its borders, is what the whole image gives
    torch.testing.assert_close(blended[:, :8, :8], whole[:, :8, :8], rtol=0, atol=0.05 * float(spread))


def test_tiling_runs_on_the_resnet_generator_and_rejects_bad_tiles():
    G = _small_resnet()
    x = _image(37, 53)
    assert translate_image(G, x, tile=24, overlap=8).shape == x.shape
    with pytest.raises(ValueError, match="tile must be a multiple of 4"):
        translate_image(G, x, tile=30)
    with pytest.raises(ValueError, match="overlap must be a multiple of 4"):
        translate_image(G, x, tile=24, overlap=24)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        translate_image(G, x[0])


# ----------------------------------------------------------------------------------------------- load_generator


def test_every_checkpoint_format_gives_the_trained_generator(run, tmp_path):
    _, model = load_run(run)
    x = _image(36, 44)
    expected = model.G(x[None])[0]
    snapshot = run / "epochs" / "G_epoch001.pt"
    assert snapshot.is_file()
    for source in (run, run / CHECKPOINT, snapshot):
        G = load_generator(source, "cpu")
        assert not G.training and not any(p.requires_grad for p in G.parameters())
        for name, value in G.state_dict().items():
            assert torch.equal(value, model.G.state_dict()[name]), (source, name)
        torch.testing.assert_close(translate_image(G, x), expected, rtol=0, atol=1e-6)
    # the same network saved in the authors' layout, as a file and as their checkpoint folder
    (tmp_path / "authors").mkdir()
    torch.save(to_reference_state_dict(model.G), tmp_path / "authors" / "latest_net_G.pth")
    for source in (tmp_path / "authors" / "latest_net_G.pth", tmp_path / "authors"):
        assert torch.equal(translate_image(load_generator(source), x), translate_image(model.G, x))


def test_stylegan2_checkpoint_loads(tmp_path):
    cfg = C.override(C.TrainConfig(), netG="stylegan2", ngf=2)
    torch.manual_seed(1)
    G = StyleGAN2Generator(ngf=2)
    torch.save({"G": G.state_dict(), "config": cfg.to_dict()}, tmp_path / "G_epoch001.pt")
    loaded = load_generator(tmp_path / "G_epoch001.pt")
    assert isinstance(loaded, StyleGAN2Generator)
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_bad_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_generator(tmp_path / "nowhere.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither checkpoint.pt .* nor latest_net_G.pth"):
        load_generator(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read .*notes.txt"):
        load_generator(tmp_path / "notes.txt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is not a generator checkpoint.*'weights'"):
        load_generator(tmp_path / "other.pt")
    torch.save({"model.1.weight": torch.zeros(4, 3, 7, 7)}, tmp_path / "half.pth")
    with pytest.raises(ValueError, match="missing keys"):
        load_generator(tmp_path / "half.pth")


# ----------------------------------------------------------------------------------------------- the command


def test_command_translates_real_odd_grayscale_and_rgba_images(run, horse2zebra_mini, tmp_path):
    out = tmp_path / "out"
    assert main(["translate", "--checkpoint", str(run), "--input", str(horse2zebra_mini / "testA"),
                 "--output", str(out), "--device", "cpu", "--no-progress"]) == 0
    inputs = list_images(horse2zebra_mini / "testA")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.stem + ".png" for p in inputs)
    G = load_generator(run)
    for src in inputs:
        written = Image.open(out / (src.stem + ".png"))
        assert written.size == Image.open(src).size and written.mode == "RGB"
    expected = ((translate_image(G, to_tensor(load_image(inputs[0]))) + 1) * 127.5).round().clamp(0, 255)
    got = torch.from_numpy(np.array(Image.open(out / (inputs[0].stem + ".png")))).permute(2, 0, 1).float()
    assert (got - expected).abs().max() <= 1  # the file holds translate_image's pixels

    # odd sizes, RGBA, a real grayscale photo, sub-folders mirrored, the input's extension kept
    odd = tmp_path / "odd"
    (odd / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 53, 4), dtype=np.uint8), "RGBA").save(odd / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (29, 18), dtype=np.uint8), "L").save(odd / "sub" / "gray.jpg")
    gray = next(p for p in list_images(horse2zebra_mini / "trainB") if Image.open(p).mode == "L")
    Image.open(gray).save(odd / "sub" / "real_gray.jpg")  # the real grayscale photo, in the test's tmp folder
    assert main(["translate", "--checkpoint", str(run / CHECKPOINT), "--input", str(odd), "--output", str(tmp_path / "o2"),
                 "--format", "same", "--tile", "16", "--overlap", "8", "--no-progress", "--device", "cpu"]) == 0
    for rel in ("rgba.png", "sub/gray.jpg", "sub/real_gray.jpg"):
        src, dst = Image.open(odd / rel), Image.open(tmp_path / "o2" / rel)
        assert dst.size == src.size and dst.mode == "RGB", rel
    # one file as --input, resized by --load-size
    assert main(["translate", "--checkpoint", str(run), "--input", str(odd / "rgba.png"), "--output", str(tmp_path / "o3"),
                 "--load-size", "32", "--no-progress", "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "o3" / "rgba.png").size == (32, 32)


def test_command_errors_name_the_problem(run, tmp_path, capsys):
    assert main(["translate", "--checkpoint", str(tmp_path / "missing"), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o")]) == 1
    assert "missing" in capsys.readouterr().err
    assert main(["translate", "--checkpoint", str(run), "--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "o")]) == 1
    assert "nothing" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--format same"):
        output_paths([tmp_path / "a.jpg", tmp_path / "a.png"], tmp_path, tmp_path / "o")


def _photos(folder, n=2, size=(40, 52)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return {p: p.read_bytes() for p in sorted(folder.iterdir())}


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("cutlib translate: "), err
    for word in words:
        assert word in err, (word, err)


def test_output_over_or_inside_the_input_is_refused_and_no_input_changes(run, tmp_path, capsys):
    photos = tmp_path / "photos"
    before = _photos(photos)
    base = ["translate", "--checkpoint", str(run), "--device", "cpu", "--no-progress"]
    assert main(base + ["--input", str(photos), "--output", str(photos)]) == 1
    _one_line_error(capsys, "is the input folder", "outside")
    assert main(base + ["--input", str(photos), "--output", str(photos / "out")]) == 1
    _one_line_error(capsys, "inside the input folder")
    assert main(base + ["--input", str(photos / "p0.png"), "--output", str(photos)]) == 1  # one file onto itself
    _one_line_error(capsys, "would overwrite the input", "p0.png")
    assert {p: p.read_bytes() for p in sorted(photos.iterdir())} == before  # nothing written, nothing replaced
    G = load_generator(run)
    with pytest.raises(ValueError, match="would overwrite the input"):
        translate_folder(G, photos / "p1.png", photos, progress=False)
    assert main(base + ["--input", str(photos), "--output", str(tmp_path / "out")]) == 0  # a folder beside: fine
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.png", "p1.png"]


def test_output_naming_a_file_and_an_unknown_device_are_one_line_errors(run, tmp_path, capsys):
    before = _photos(tmp_path / "photos")
    (tmp_path / "taken.png").write_bytes(b"mine")
    base = ["translate", "--checkpoint", str(run), "--input", str(tmp_path / "photos"), "--no-progress"]
    assert main(base + ["--output", str(tmp_path / "taken.png"), "--device", "cpu"]) == 1
    _one_line_error(capsys, "taken.png", "existing file", "pass a folder")
    assert (tmp_path / "taken.png").read_bytes() == b"mine"
    assert main(base + ["--output", str(tmp_path / "o"), "--device", "banana"]) == 1
    _one_line_error(capsys, "'banana'", "cpu", "cuda:N")
    assert not (tmp_path / "o").exists() and {p: p.read_bytes() for p in before} == before


def test_truncated_bmp_and_tiff_are_skipped_by_translate_with_their_names(run, tmp_path):
    photos = tmp_path / "photos"
    _photos(photos, n=1)
    for name, fmt in (("cut.bmp", "BMP"), ("cut.tif", "TIFF")):
        Image.fromarray(np.zeros((40, 44, 3), np.uint8) + 90).save(photos / name, format=fmt)
        (photos / name).write_bytes((photos / name).read_bytes()[:2000])  # header intact, pixels cut short
    with pytest.warns(UserWarning, match="unreadable") as record:
        written = translate_folder(load_generator(run), photos, tmp_path / "out", keep_extension=True, progress=False)
    message = " ".join(str(w.message) for w in record)
    assert "cut.bmp" in message and "cut.tif" in message
    assert written == [tmp_path / "out" / "p0.png"] and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.png"]


def test_memory_estimate_scales_with_the_pixels_and_matches_a_real_forward():
    G = ResnetGenerator(ngf=8, n_blocks=2).eval()
    per_pixel = bytes_per_pixel(G)
    assert whole_image_bytes(G, 400, 600) == pytest.approx(per_pixel * 400 * 600, rel=1e-6)
    assert whole_image_bytes(G, 37, 53) == whole_image_bytes(G, 40, 56)  # padded to the multiple of 4
    assert whole_image_bytes(G, 100, 100, batch=3) == pytest.approx(3 * whole_image_bytes(G, 100, 100), rel=1e-6)
    limit, why = memory_limit(torch.device("cpu"))
    assert limit > 0 and "half" in why
    # the peak resident memory of one real forward pass (Linux: /proc/self/clear_refs resets the peak)
    script = """
import torch
from cutlib.networks import ResnetGenerator
from cutlib.memory import whole_image_bytes
torch.set_num_threads(1)
G = ResnetGenerator(ngf=8, n_blocks=2).eval()
x = torch.rand(1, 3, 768, 768) * 2 - 1
status = lambda key: next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
with torch.no_grad():
    G(x[..., :64, :64])
    estimate = whole_image_bytes(G, 768, 768)
    open("/proc/self/clear_refs", "w").write("5")
    base = status("VmRSS:")
    G(x)
print(status("VmHWM:") - base, estimate)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and "clear_refs" in done.stderr:
        pytest.skip("cannot reset the peak memory of a process here (/proc/self/clear_refs)")
    assert done.returncode == 0, done.stderr
    used, estimate = map(int, done.stdout.split())
    assert 0.5 * used < estimate < 2 * used, (used, estimate)


def test_an_image_too_big_for_the_limit_is_refused_with_the_tile_to_use(run, tmp_path, capsys):
    G = load_generator(run)
    x = _image(600, 800)
    need = whole_image_bytes(G, 600, 800)
    with pytest.raises(TooLargeError, match=r"800x600 px.*more than the limit.*--tile \d+"):
        translate_image(G, x, max_memory=need // 4)
    assert translate_image(G, x[:, :200, :200], max_memory=need // 4).shape == (3, 200, 200)  # small enough
    assert translate_image(G, x, tile=256, max_memory=need // 4).shape == x.shape  # tiled: no whole-image check
    # the command on a real file: refused before anything is written, then done in the suggested tiles
    photos = tmp_path / "photos"
    _photos(photos, n=1, size=(600, 800))
    base = ["translate", "--checkpoint", str(run), "--input", str(photos), "--output", str(tmp_path / "out"),
            "--device", "cpu", "--no-progress"]
    assert main(base + ["--max-memory", str(need / 4 / 1e9)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "p0.png" in err and "--max-memory" in err and not (tmp_path / "out").exists()
    tile = err.split("--tile ")[1].split()[0]
    assert main(base + ["--max-memory", str(need / 4 / 1e9), "--tile", tile]) == 0
    assert Image.open(tmp_path / "out" / "p0.png").size == (800, 600)


# ----------------------------------------------------------------------------------------------- pretrained archive


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


def _authors_model(seed=3):
    """A small generator and its authors'-layout state dict serialised (what latest_net_G.pth holds)."""
    G = _small_resnet(seed)
    blob = io.BytesIO()
    torch.save(to_reference_state_dict(G), blob)
    return G, blob.getvalue()


def test_pretrained_entry_lists_the_six_models_and_loads_them_by_name(tmp_path, monkeypatch):
    entry = get_entry("cut_pretrained")
    assert entry["kind"] == "pretrained" and entry["url"].endswith("/CUT/pretrained_models.tar")
    names = [m["name"] for m in entry["models"]]
    assert {f"{d}_{m}_pretrained" for d in ("horse2zebra", "cat2dog", "cityscapes") for m in ("cut", "fastcut")} == set(names)
    G, blob = _authors_model()
    path = tmp_path / "data" / "cut_pretrained" / entry["models"][0]["path"]  # where the downloader puts it
    path.parent.mkdir(parents=True)
    path.write_bytes(blob)
    monkeypatch.setenv("CUTLIB_DATA", str(tmp_path / "data"))
    x = _image(37, 53)
    assert torch.equal(translate_image(load_generator(entry["models"][0]["name"]), x), translate_image(G, x))
    with pytest.raises(FileNotFoundError, match="python -m cutlib download cut_pretrained"):
        load_generator("cat2dog_fastcut_pretrained")


def test_pretrained_archive_downloads_with_the_real_downloader(tmp_path):
    """The entry fetched by the real downloader from a local HTTP server serving a tar laid out as the
    authors' README says (checkpoints/<model>/latest_net_G.pth)."""
    entry = get_entry("cut_pretrained")
    G, blob = _authors_model()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo("checkpoints/horse2zebra_cut_pretrained/latest_net_G.pth")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "pretrained_models.tar").write_bytes(archive.getvalue())
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(tmp_path / "www")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/pretrained_models.tar"
        folder = download_dataset("cut_pretrained", tmp_path / "data", entry={**entry, "url": url}, progress=False)
    finally:
        server.shutdown()
    x = _image(37, 53)
    assert torch.equal(translate_image(load_generator(folder / "horse2zebra_cut_pretrained"), x), translate_image(G, x))


def test_the_memory_probe_leaves_the_random_state_alone():
    """A generator with noise injection draws from torch's RNG: estimating memory must not move it."""
    from cutlib.memory import bytes_per_pixel

    G = StyleGAN2Generator(ngf=2).eval()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    bytes_per_pixel(G)
    assert torch.equal(torch.get_rng_state(), before)
