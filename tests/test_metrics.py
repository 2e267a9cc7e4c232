"""cutlib.metrics against closed forms, plain loops, hand-made label maps and pytorch-fid itself."""

from __future__ import annotations

import math
import shutil
import socket

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from cutlib.inception import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    InceptionExtractor,
    InceptionWeightsNotFound,
    find_inception_weights,
    inception_weights_dir,
    pytorch_fid_inception,
)
from cutlib.metrics import (
    FeatureExtractor,
    FewImagesWarning,
    MIN_IMAGES,
    RandomConvExtractor,
    feature_statistics,
    fid,
    frechet_distance,
    image_features,
    image_files,
    kid,
    kid_score,
    kid_subset_size,
    load_image,
    mmd2_unbiased,
    polynomial_kernel,
)
from cutlib.segmentation import confusion_matrix, scores_from_confusion, segmentation_scores


def random_rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


# ---------------------------------------------------------------- Frechet distance


def test_frechet_distance_diagonal_covariances_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_commuting_covariances_closed_form():
    # S1 = Q diag(a) Q^T and S2 = Q diag(b) Q^T commute: Tr sqrt(S1 S2) = sum sqrt(a b)
    q = random_rotation(6, seed=1)
    a, b = np.linspace(0.5, 3, 6), np.linspace(2, 0.2, 6)
    mu1, mu2 = np.zeros(6), np.full(6, 0.5)
    expected = 6 * 0.25 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_general_covariances_match_the_symmetric_formula():
    # Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), the latter through eigh only (independent route)
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2 = x @ x.T + 0.1 * np.eye(4), y @ y.T + 0.1 * np.eye(4)
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    expected = np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(inner))
    assert frechet_distance(np.zeros(4), s1, np.zeros(4), s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(torch.zeros(4), torch.tensor(s1), torch.zeros(4), torch.tensor(s2)) == pytest.approx(expected, rel=1e-8)


def test_fid_of_two_large_gaussian_samples_approaches_the_closed_form():
    rng = np.random.default_rng(3)
    d, n = 4, 200_000
    mu1, mu2 = np.zeros(d), np.array([1.0, -0.5, 0.0, 0.25])
    s1, s2 = np.array([1.0, 2.0, 0.5, 1.5]), np.array([0.5, 1.0, 2.0, 1.5])
    x = mu1 + rng.normal(size=(n, d)) * np.sqrt(s1)
    y = mu2 + rng.normal(size=(n, d)) * np.sqrt(s2)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(*feature_statistics(x), *feature_statistics(y))
    assert got == pytest.approx(expected, abs=0.02)


def test_feature_statistics_is_mean_and_unbiased_covariance():
    x = np.random.default_rng(4).normal(size=(10, 3))
    mu, sigma = feature_statistics(torch.tensor(x))
    centred = x - x.mean(0)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, centred.T @ centred / 9)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(x[:1])


def test_frechet_distance_adds_eps_when_the_product_has_no_finite_square_root():
    # [[0, 1], [0, 0]] has no square root (sqrtm returns inf): the pytorch-fid fallback adds eps
    eps = 1e-6
    with pytest.warns(RuntimeWarning, match="singular product"):
        got = frechet_distance(np.zeros(2), np.array([[0.0, 1.0], [0.0, 0.0]]), np.zeros(2), np.eye(2), eps=eps)
    # sqrt of [[e', 1+eps], [0, e']] with e' = eps (1 + eps) has trace 2 sqrt(e')
    expected = 0 + 2 - 2 * 2 * math.sqrt(eps * (1 + eps))
    assert got == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_rejects_bad_inputs():
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), -np.eye(2))
    with pytest.raises(ValueError, match="sigma1 and sigma2"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="mu1 and mu2"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(2))


# ---------------------------------------------------------------- KID


def loop_mmd2(x, y, degree=3, coef0=1.0):
    """Unbiased MMD^2 with k(a, b) = (a.b / d + coef0)^degree, pair by pair."""
    d = len(x[0])

    def k(a, b):
        return (sum(ai * bi for ai, bi in zip(a, b)) / d + coef0) ** degree

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_unbiased_matches_the_double_loop():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(7, 3)), rng.normal(loc=0.5, size=(9, 3))
    assert mmd2_unbiased(x, y) == pytest.approx(loop_mmd2(x.tolist(), y.tolist()), rel=1e-10)
    assert mmd2_unbiased(x, y, degree=2, coef0=0.5) == pytest.approx(loop_mmd2(x.tolist(), y.tolist(), 2, 0.5), rel=1e-10)


def test_polynomial_kernel_default_gamma_is_one_over_d():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(2, 4)), rng.normal(size=(3, 4))
    np.testing.assert_allclose(polynomial_kernel(x, y), (x @ y.T / 4 + 1) ** 3)
    np.testing.assert_allclose(polynomial_kernel(x, y, degree=1, gamma=2.0, coef0=0), 2 * x @ y.T)


def test_kid_on_whole_sets_equals_the_double_loop():
    # subsets of the full size are permutations of the sets, and MMD^2 ignores order: every subset is the loop value
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(6, 3)), rng.normal(loc=1.0, size=(6, 3))
    mean, std = kid(torch.tensor(x), torch.tensor(y), num_subsets=5, subset_size=6)
    assert mean == pytest.approx(loop_mmd2(x.tolist(), y.tolist()), rel=1e-10)
    assert std == pytest.approx(0, abs=1e-12)


def test_kid_subsets_clip_to_the_smaller_set_and_follow_the_seed():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(10, 3))
    assert kid_subset_size(30, 10, 1000) == 10 and kid_subset_size(30, 10, 4) == 4
    assert kid(x, y, num_subsets=20, subset_size=1000, seed=1) == kid(x, y, num_subsets=20, subset_size=10, seed=1)
    mean, std = kid(x, y, num_subsets=20, subset_size=5, seed=1)
    assert std > 0  # different subsets, different estimates
    assert (mean, std) == kid(x, y, num_subsets=20, subset_size=5, seed=np.random.default_rng(1))
    assert (mean, std) != kid(x, y, num_subsets=20, subset_size=5, seed=2)


def test_kid_separates_distributions():
    rng = np.random.default_rng(9)
    a, b, c = rng.normal(size=(200, 8)), rng.normal(size=(200, 8)), rng.normal(loc=0.5, size=(200, 8))
    same, _ = kid(a, b, num_subsets=20, subset_size=100)
    different, _ = kid(a, c, num_subsets=20, subset_size=100)
    assert abs(same) < 0.1 * different


def test_kid_from_few_images_warns_and_enough_images_do_not():
    import warnings

    rng = np.random.default_rng(10)
    with pytest.warns(FewImagesWarning, match=r"only 2 real and 2 generated images \(fewer than 50\)") as record:
        _, std = kid(rng.normal(size=(2, 4)), rng.normal(size=(2, 4)), num_subsets=10)
    assert std == pytest.approx(0, abs=1e-12) and "std over subsets" in str(record[0].message)  # what it warns of
    with pytest.warns(FewImagesWarning, match="only 60 real and 49 generated"):
        kid(rng.normal(size=(60, 4)), rng.normal(size=(MIN_IMAGES - 1, 4)), num_subsets=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FewImagesWarning)
        kid(rng.normal(size=(MIN_IMAGES, 4)), rng.normal(size=(MIN_IMAGES, 4)), num_subsets=2)


def test_kid_rejects_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        kid(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="features_a and features_b"):
        kid(np.zeros((4, 3)), np.zeros((4, 2)))


# ---------------------------------------------------------------- extractors and images


def test_random_conv_extractor_is_deterministic_and_seeded():
    images = torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    a, b, c = RandomConvExtractor(dims=16, seed=0), RandomConvExtractor(dims=16, seed=0), RandomConvExtractor(dims=16, seed=1)
    assert isinstance(a, FeatureExtractor) and a.dims == 16 and a.name != c.name
    feats = a(images)
    assert feats.shape == (3, 16)
    torch.testing.assert_close(feats, b(images))
    assert not torch.allclose(feats, c(images))
    torch.testing.assert_close(a(images[:1]), feats[:1])  # one image's features do not depend on the batch


def test_image_features_checks_the_image_convention():
    extractor = RandomConvExtractor(dims=8)
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        image_features(torch.rand(2, 3, 16, 16) * 2 - 1, extractor)
    with pytest.raises(TypeError, match="float"):
        image_features(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), extractor)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        image_features(torch.rand(2, 1, 16, 16), extractor)
    with pytest.raises(TypeError, match="folder path or a tensor"):
        image_features(np.zeros((2, 3, 16, 16)), extractor)


def test_image_folders_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        image_files(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=str(tmp_path)):
        image_files(tmp_path)


def test_grayscale_and_rgba_images_are_read_as_rgb(tmp_path):
    rng = np.random.default_rng(10)
    rgb = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, size=(12, 10), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a_rgb.png")
    Image.fromarray(np.dstack([rgb, rng.integers(0, 256, size=(12, 10), dtype=np.uint8)]), "RGBA").save(tmp_path / "b_rgba.PNG")
    Image.fromarray(gray).save(tmp_path / "c_gray.png")
    images = [load_image(p) for p in image_files(tmp_path)]
    assert [im.shape for im in images] == [(3, 12, 10)] * 3
    torch.testing.assert_close(images[0], torch.tensor(rgb).permute(2, 0, 1).float() / 255)
    torch.testing.assert_close(images[1], images[0])  # alpha dropped
    torch.testing.assert_close(images[2], torch.tensor(gray).float().expand(3, -1, -1) / 255)


def test_folders_of_mixed_sizes_give_the_per_image_features(tmp_path):
    rng = np.random.default_rng(11)
    for i, size in enumerate([(20, 20), (20, 20), (30, 24), (20, 20)]):
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    extractor = RandomConvExtractor(dims=8)
    feats = image_features(tmp_path, extractor, batch_size=3)
    one_by_one = np.concatenate([extractor(load_image(p)[None]).numpy() for p in image_files(tmp_path)])
    np.testing.assert_allclose(feats, one_by_one, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- FID / KID on real images


def folder_tensor(folder) -> torch.Tensor:
    """A folder of same-size images as (N, 3, H, W) in [0, 1], read with PIL directly."""
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for p in image_files(folder)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def test_fid_and_kid_on_real_folders(horse2zebra_mini):
    a, b = horse2zebra_mini / "testA", horse2zebra_mini / "testB"
    extractor = RandomConvExtractor()
    between = fid(a, b, extractor=extractor, batch_size=3)
    itself = fid(a, a, extractor=extractor)
    assert math.isfinite(between["fid"]) and between["fid"] > 0
    assert abs(itself["fid"]) < 1e-4 * between["fid"]
    assert between["num_real"] == 8 and between["num_fake"] == 8
    assert between["extractor"] == extractor.name and between["dims"] == 64
    assert between["comparable_with_published"] is False
    assert "only the standard Inception extractor" in between["note"] and "rank-deficient" in between["note"]

    k_between = kid_score(a, b, extractor=extractor, num_subsets=10)
    k_itself = kid_score(a, a, extractor=extractor, num_subsets=10)
    assert k_between["subset_size"] == 8 and k_between["num_subsets"] == 10
    assert math.isfinite(k_between["kid_mean"]) and k_between["kid_std"] >= 0
    # the unbiased estimator of a set against itself is -(2/m)(mean k(x,x) - mean k(x,y)), x != y: slightly negative
    f = image_features(a, extractor)
    k = polynomial_kernel(f, f)
    m = len(f)
    expected_self = -(2 / m) * (np.trace(k) / m - (k.sum() - np.trace(k)) / (m * (m - 1)))
    assert k_itself["kid_mean"] == pytest.approx(expected_self, rel=1e-9) and k_itself["kid_mean"] < 0
    assert k_between["kid_mean"] > k_itself["kid_mean"]


def test_tensors_and_folders_give_the_same_scores(horse2zebra_mini):
    a, b = horse2zebra_mini / "testA", horse2zebra_mini / "testB"
    extractor = RandomConvExtractor(dims=32, seed=3)
    # the same pixels in the same batches: the same features (up to float32 rounding), so the same scores
    np.testing.assert_allclose(image_features(a, extractor, batch_size=4), image_features(folder_tensor(a), extractor, batch_size=4), rtol=1e-5, atol=1e-7)
    from_folders = fid(a, b, extractor=extractor, batch_size=4)
    from_tensors = fid(folder_tensor(a), folder_tensor(b), extractor=extractor, batch_size=4)
    assert from_tensors["fid"] == pytest.approx(from_folders["fid"], rel=1e-5)
    k_folders = kid_score(a, b, extractor=extractor, num_subsets=5, subset_size=5, seed=1)
    k_tensors = kid_score(folder_tensor(a), folder_tensor(b), extractor=extractor, num_subsets=5, subset_size=5, seed=1)
    assert k_tensors["kid_mean"] == pytest.approx(k_folders["kid_mean"], abs=1e-7)  # KID ~1e-4, kernel terms ~1
    # other batch sizes change float32 rounding only
    np.testing.assert_allclose(image_features(a, extractor, batch_size=3), image_features(folder_tensor(a), extractor, batch_size=8), rtol=1e-4, atol=1e-6)


def test_grayscale_files_of_the_real_slice_load_as_rgb(horse2zebra_mini):
    gray = [p for p in image_files(horse2zebra_mini / "trainB") if Image.open(p).mode == "L"]
    assert gray, "the slice documents three grayscale zebras"
    image = load_image(gray[0])
    assert image.shape[0] == 3 and torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_a_custom_extractor_cannot_be_given_a_device():
    images = torch.rand(4, 3, 16, 16)
    with pytest.raises(ValueError, match="device"):
        fid(images, images, extractor=RandomConvExtractor(dims=4), device="cpu")


# ---------------------------------------------------------------- Inception weights


@pytest.fixture
def offline_empty_hub(tmp_path, monkeypatch):
    """An empty torch hub dir, no weights env var, and a proxy that refuses connections at once."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # the discard port: connection refused, no waiting
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5)  # belt and braces: never hang on the network
    yield tmp_path
    socket.setdefaulttimeout(previous)


def test_missing_inception_weights_error_says_what_and_where(offline_empty_hub):
    folder = inception_weights_dir()
    assert str(folder).startswith(str(offline_empty_hub))
    with pytest.raises(InceptionWeightsNotFound) as error:
        InceptionExtractor()
    message = str(error.value)
    assert INCEPTION_WEIGHTS_FILE in message and str(folder) in message
    assert "download failed" in message and "https://github.com/mseitzer/pytorch-fid" in message
    assert not any(folder.glob("*")), "a failed download must not leave a partial file behind"
    with pytest.raises(InceptionWeightsNotFound, match="download=False"):
        find_inception_weights(download=False)


def test_offline_error_names_the_file_the_folder_and_the_env_var(offline_empty_hub):
    with pytest.raises(InceptionWeightsNotFound) as error:
        InceptionExtractor(download=False)
    message = str(error.value)
    assert INCEPTION_WEIGHTS_FILE in message and str(inception_weights_dir()) in message
    assert INCEPTION_WEIGHTS_ENV in message and INCEPTION_WEIGHTS_URL in message


def test_explicit_weights_path_that_does_not_exist_is_named(offline_empty_hub, monkeypatch):
    missing = offline_empty_hub / "elsewhere" / INCEPTION_WEIGHTS_FILE
    with pytest.raises(InceptionWeightsNotFound, match="weights_path"):
        find_inception_weights(missing)
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(missing))
    with pytest.raises(InceptionWeightsNotFound, match=INCEPTION_WEIGHTS_ENV):
        find_inception_weights()


def test_a_file_that_is_not_the_inception_state_dict_is_named(offline_empty_hub):
    garbage, wrong_keys = offline_empty_hub / "garbage.pth", offline_empty_hub / "wrong_keys.pth"
    garbage.write_bytes(b"not a torch file")
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong_keys)
    for path, reason in [(garbage, "UnpicklingError"), (wrong_keys, "Missing key")]:
        with pytest.raises(ValueError, match="is not the FID Inception state dict") as error:
            pytorch_fid_inception(path)
        assert str(path) in str(error.value) and reason in str(error.value) and INCEPTION_WEIGHTS_URL in str(error.value)


def random_inception_weights(path, seed: int) -> None:
    """A random state dict in the layout of the FID weights file, saved at ``path``.

    torchvision's Inception-v3 with 1008 classes and no aux head has exactly the FID net's parameters
    (pytorch-fid's FID blocks only change forward()). Variance-preserving, so features are far from 0.
    """
    net, g = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, init_weights=False), torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=g)
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5, generator=g)
            module.bias.data.normal_(0, 0.1, generator=g)
            module.running_mean.normal_(0, 0.1, generator=g)
            module.running_var.uniform_(0.5, 1.5, generator=g)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)


def pytorch_fid_features(images: torch.Tensor) -> torch.Tensor:
    """pytorch-fid's own InceptionV3, which loads torch.hub.get_dir()/checkpoints/<weights file> itself."""
    from pytorch_fid.inception import InceptionV3

    assert (inception_weights_dir() / INCEPTION_WEIGHTS_FILE).is_file(), "pytorch-fid would try to download"
    with torch.no_grad():
        return InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()(images)[0].flatten(1)  # (N, 2048)


@pytest.mark.slow
def test_inception_extractor_equals_pytorch_fid_on_the_same_weights(offline_empty_hub):
    # The real weights are not on this machine: both networks get the same random weights, from the
    # temporary hub dir where pytorch-fid looks, and must agree (layers, resizing, scaling).
    path = inception_weights_dir() / INCEPTION_WEIGHTS_FILE
    random_inception_weights(path, seed=0)
    assert find_inception_weights() == path

    ours = InceptionExtractor(device="cpu")
    images = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    expected = pytorch_fid_features(images)
    got = ours(images)
    assert (expected[0] - expected[1]).abs().max() > 0.1, "features too small for the comparison to mean anything"
    assert got.shape == (2, 2048) and ours.dims == 2048
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # (kid_score, not fid: the 2048 x 2048 sqrtm of FID alone takes ~30 s on one CPU thread)
    result = kid_score(images, images.flip(-1), extractor=ours, num_subsets=2)
    assert result["comparable_with_published"] is True and result["extractor"] == InceptionExtractor.name
    assert result["dims"] == 2048 and "comparable with published" in result["note"]


@pytest.mark.slow
def test_weights_named_by_the_env_var_are_the_ones_loaded(offline_empty_hub, monkeypatch):
    elsewhere = offline_empty_hub / "elsewhere" / "my-inception.pth"
    random_inception_weights(elsewhere, seed=2)
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(elsewhere))
    hub = torch.hub.get_dir()

    ours = InceptionExtractor(device="cpu")
    assert torch.hub.get_dir() == hub, "torch.hub's folder must be restored"
    assert not (inception_weights_dir() / INCEPTION_WEIGHTS_FILE).exists(), "nothing downloaded or copied into the hub"
    images = torch.rand(3, 3, 299, 299, generator=torch.Generator().manual_seed(3))
    got = ours(images)
    inception_weights_dir().mkdir(parents=True, exist_ok=True)
    shutil.copyfile(elsewhere, inception_weights_dir() / INCEPTION_WEIGHTS_FILE)
    expected = pytorch_fid_features(images)
    assert (expected[0] - expected[1]).abs().max() > 0.1, "features too small for the comparison to mean anything"
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- segmentation scores


def test_confusion_matrix_counts_target_rows_prediction_columns():
    target = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])  # the 255 pixel is dropped
    np.testing.assert_array_equal(confusion_matrix(pred, target, 3, ignore_index=255), expected)
    np.testing.assert_array_equal(confusion_matrix(torch.tensor(pred), torch.tensor(target), 3, 255), expected)


def test_segmentation_scores_on_hand_made_label_maps():
    # 4 classes; class 3 appears nowhere (excluded); class 2 only in the prediction (IoU 0, counts)
    target = np.array([[0, 0, 0, 0],
                       [1, 1, 1, 1],
                       [0, 0, 1, 1],
                       [9, 9, 9, 9]])  # 9 = void
    pred = np.array([[0, 0, 0, 2],
                     [1, 1, 0, 1],
                     [0, 0, 1, 1],
                     [3, 3, 3, 3]])  # predictions on void pixels do not count
    scores = segmentation_scores(pred, target, num_classes=4, ignore_index=9)
    # class 0: 6 target pixels, 5 hit; predicted 0 on 6 pixels -> IoU 5 / 7
    # class 1: 6 target pixels, 5 hit; predicted 1 on 5 pixels -> IoU 5 / 6
    # class 2: 0 target pixels; predicted once -> IoU 0 / 1
    assert scores["pixel_acc"] == pytest.approx(10 / 12)
    assert scores["class_acc"] == pytest.approx((5 / 6 + 5 / 6) / 2)
    assert scores["mean_iou"] == pytest.approx((5 / 7 + 5 / 6 + 0) / 3)
    assert scores["per_class_iou"][:3] == pytest.approx([5 / 7, 5 / 6, 0.0])
    assert scores["per_class_iou"][3] is None and scores["num_pixels"] == 12


def test_segmentation_scores_perfect_and_accumulated():
    rng = np.random.default_rng(12)
    target = rng.integers(0, 5, size=(3, 8, 8))
    perfect = segmentation_scores(torch.tensor(target), torch.tensor(target), 5)
    assert perfect["pixel_acc"] == perfect["class_acc"] == perfect["mean_iou"] == 1.0
    pred = rng.integers(0, 5, size=(3, 8, 8))
    summed = sum(confusion_matrix(pred[i], target[i], 5) for i in range(3))
    assert scores_from_confusion(summed) == segmentation_scores(pred, target, 5)


def test_segmentation_scores_reject_bad_labels():
    with pytest.raises(ValueError, match="ignore_index"):
        segmentation_scores(np.array([0, 1]), np.array([0, 255]), 2)
    with pytest.raises(ValueError, match="pred labels"):
        segmentation_scores(np.array([0, 2]), np.array([0, 1]), 2)
    with pytest.raises(TypeError, match="integer"):
        segmentation_scores(np.array([0.0, 1.0]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="same shape"):
        segmentation_scores(np.array([0, 1, 1]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="no labelled pixels"):
        segmentation_scores(np.array([0, 1]), np.array([9, 9]), 2, ignore_index=9)
