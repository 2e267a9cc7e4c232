"""TrainConfig, presets, overrides and the learning-rate schedule (book/reference.md section 5)."""

import pytest

from cutlib import config as C
from cutlib.train import linear_decay


def test_cut_preset_has_the_reference_defaults():
    cfg = C.CUT()
    assert (cfg.lambda_nce, cfg.nce_idt, cfg.flip_equivariance) == (1.0, True, False)
    assert (cfg.n_epochs, cfg.n_epochs_decay, cfg.lr, cfg.beta1, cfg.beta2) == (200, 200, 2e-4, 0.5, 0.999)
    assert cfg.nce_layers == ("rgb", "down1", "down2", "res1", "res5")
    assert (cfg.num_patches, cfg.nce_t, cfg.netF_nc, cfg.gan_mode, cfg.batch_size) == (256, 0.07, 256, "lsgan", 1)
    assert (cfg.load_size, cfg.crop_size, cfg.ngf, cfg.ndf, cfg.n_blocks) == (286, 256, 64, 64, 9)


def test_fastcut_preset():
    cfg = C.FastCUT()
    assert (cfg.lambda_nce, cfg.nce_idt, cfg.flip_equivariance) == (10.0, False, True)
    assert (cfg.n_epochs, cfg.n_epochs_decay) == (150, 50)


def test_cyclegan_preset_keeps_crop_jitter_in_the_decay_epochs():
    cfg = C.CycleGAN()
    assert (cfg.model, cfg.antialias, cfg.lambda_cycle, cfg.lambda_identity, cfg.pool_size) == ("cyclegan", False, 10.0, 0.5, 50)
    assert not cfg.decay_no_jitter and C.CUT().decay_no_jitter


def test_overrides_by_name_and_string_parsing():
    cfg = C.preset("FastCUT", crop_size="64", load_size=72, nce_idt="true", nce_layers="rgb,res1", lr="1e-3")
    assert (cfg.crop_size, cfg.load_size, cfg.nce_idt, cfg.nce_layers, cfg.lr) == (64, 72, True, ("rgb", "res1"), 1e-3)
    assert cfg.flip_equivariance  # the preset's own values survive


def test_unknown_field_lists_valid_names_and_suggests():
    with pytest.raises(ValueError) as err:
        C.CUT(lamda_nce=2)
    assert "lamda_nce" in str(err.value) and "lambda_nce" in str(err.value) and "Valid names" in str(err.value)


@pytest.mark.parametrize("name,value", [("batch_size", "two"), ("nce_idt", "maybe"), ("lr", [1]), ("gan_mode", "wgan")])
def test_wrong_types_are_errors_naming_the_field(name, value):
    with pytest.raises((TypeError, ValueError)) as err:
        C.CUT(**{name: value})
    assert name in str(err.value)


def test_value_checks():
    with pytest.raises(ValueError, match="crop_size"):
        C.CUT(load_size=64, crop_size=128)
    with pytest.raises(ValueError, match="unknown preset"):
        C.preset("pix2pix")


def test_config_round_trips_through_a_dict():
    cfg = C.FastCUT(crop_size=64, load_size=64, nce_layers=("rgb", "res1"))
    assert C.from_dict(cfg.to_dict()) == cfg


def test_linear_decay_formula():
    # lr * (1 - max(0, k - n_epochs) / (n_epochs_decay + 1)), k 1-based
    assert [linear_decay(k, 2, 3) for k in range(1, 6)] == [1.0, 1.0, 0.75, 0.5, 0.25]
    assert linear_decay(400, 200, 200) == pytest.approx(1 / 201)


def test_numbers_from_papermill_and_yaml_are_accepted_but_bools_are_not():
    assert C.CUT(batch_size=4.0).batch_size == 4 and C.CUT(lr=1).lr == 1.0
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        C.CUT(batch_size=True)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        C.CUT(batch_size=2.5)


@pytest.mark.parametrize("name,value", [("lambda_nce", "nan"), ("lr", "inf"), ("lr", float("inf")), ("nce_t", float("-inf")),
                                        ("lambda_nce", float("nan"))])
def test_non_finite_numbers_are_refused_by_override_and_from_dict(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        C.override(C.CUT(), **{name: value})
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        C.from_dict({**C.CUT().to_dict(), name: value})


@pytest.mark.parametrize("name", ["num_workers", "dataset_len", "save_epoch_freq"])
def test_negative_counts_are_refused(name):
    with pytest.raises(ValueError, match=f"{name} must be >= 0"):
        C.CUT(**{name: -1})


def test_command_line_refuses_non_finite_numbers_in_one_line(tmp_path):
    import subprocess
    import sys

    for flag, value in (("--lambda-nce", "nan"), ("--lr", "inf")):
        done = subprocess.run([sys.executable, "-m", "cutlib", "train", "--out", str(tmp_path / "run"), flag, value],
                              capture_output=True, text=True)
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "must be a finite number" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
