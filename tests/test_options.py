"""The command-line options generated from TrainConfig: help text, suggestions, abbreviations, overrides."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import subprocess
import sys
import types
import typing
from dataclasses import dataclass

import pytest

from cutlib import config as C
from cutlib.options import (
    ConfigParser,
    add_config_options,
    default_text,
    field_comments,
    overrides_from_args,
    type_text,
)


def _source_comments() -> dict[str, str]:
    """{field: comment} read with a plain regex from the TrainConfig source, to check field_comments against."""
    found = {}
    for line in inspect.getsource(C.TrainConfig).splitlines():
        match = re.match(r"^    (\w+): [^=]+=[^#]*(?:#\s*(.*))?$", line)
        if match:
            found[match.group(1)] = (match.group(2) or "").strip()
    return found


def _metavar(hint) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "{" + ",".join(typing.get_args(hint)) + "}"
    if typing.get_origin(hint) is tuple:
        return "NAMES"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # int | Literal["auto"] -> INT|auto
        return "|".join(_metavar(arg).strip("{}") for arg in typing.get_args(hint))
    return {bool: "[true|false]", int: "INT", float: "FLOAT", str: "STR"}[hint]


def _parser(**kwargs) -> ConfigParser:
    p = ConfigParser(prog="prog")
    add_config_options(p, **kwargs)
    return p


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "3000")  # one help line per option, no word broken at a hyphen


def test_help_lists_every_field_with_type_default_and_comment(wide):
    text = " ".join(_parser().format_help().split())
    comments = _source_comments()
    hints = typing.get_type_hints(C.TrainConfig)
    assert set(comments) == set(C.FIELDS) and sum(map(bool, comments.values())) > 25
    for f in dataclasses.fields(C.TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert f"{flag} {_metavar(hints[f.name])} " in text, f.name
        default = str(f.default).lower() if isinstance(f.default, bool) else (
            ",".join(f.default) if isinstance(f.default, tuple) else str(f.default))
        comment = comments[f.name] or f"{f.name}: "  # fields without a comment get a generated one
        assert re.search(re.escape(comment) + r"[^()]*\(default: " + re.escape(default) + r"\)", text), f.name
        if "_" in f.name:
            assert "--" + f.name + " " not in text  # the Python spelling is accepted, not listed
    assert "training settings: networks:" in text and "sections 3" not in text


def test_field_comments_of_trainconfig_match_the_source():
    docs = field_comments()
    assert list(docs) == list(C.FIELDS)
    for name, comment in _source_comments().items():
        assert docs[name].from_source == bool(comment) and (docs[name].comment == comment or not comment), name
    assert docs["ngf"].section == "networks" and docs["lr"].section == "optimisation"
    assert all(d.from_source for d in docs.values()), [n for n, d in docs.items() if not d.from_source]  # every field is explained


@dataclass
class _Toy:
    # --- first part (section 2)
    a: int = 1  # the a # with a hash
    b: str = "x # not a comment"
    # a plain comment, not a section
    # --- second
    c: tuple[str, ...] = (
        "p",  # inside
        "q",
    )  # spans lines
    flag: bool = False


def test_field_comments_reads_sections_strings_and_multiline_fields():
    docs = field_comments(_Toy)
    assert (docs["a"].section, docs["a"].comment, docs["a"].from_source) == ("first part", "the a # with a hash", True)
    assert (docs["b"].comment, docs["b"].from_source) == ("b: a string", False)
    assert (docs["c"].section, docs["c"].comment) == ("second", "spans lines")
    assert docs["flag"].comment == "flag: true or false"


def test_field_comments_without_source_are_generated_and_non_dataclasses_refused():
    made = dataclasses.make_dataclass("Made", [("n", int, 3), ("mode", typing.Literal["x", "y"], "x")])
    docs = field_comments(made)
    assert [(d.comment, d.from_source, d.section) for d in docs.values()] == [
        ("n: an integer", False, ""), ("mode: one of x, y", False, "")]
    with pytest.raises(TypeError, match="dataclass"):
        field_comments(int)


def test_type_and_default_text():
    assert type_text(int) == ("INT", "an integer") and type_text(float)[0] == "FLOAT"
    assert type_text(bool)[0] == "true|false" and type_text(tuple[str, ...])[0] == "NAMES"
    assert type_text(typing.Literal["a", "b"]) == ("{a,b}", "one of a, b")
    assert default_text(True) == "true" and default_text(("rgb", "res1")) == "rgb,res1" and default_text(2e-4) == "0.0002"


def test_unknown_option_names_the_nearest(capsys):
    p = _parser()
    with pytest.raises(SystemExit) as err:
        p.parse_args(["--lamda-nce", "2"])
    assert err.value.code == 2
    assert "unknown option --lamda-nce: did you mean --lambda-nce?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        p.parse_args(["--lamda_nce=2"])
    assert "did you mean --lambda-nce?" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        p.parse_args(["--qqqqqq"])
    assert err.value.code == 2 and "unknown option --qqqqqq; see --help" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        p.parse_args(["stray"])
    assert "unexpected argument(s): stray" in capsys.readouterr().err


def test_abbreviations_are_refused(capsys):
    for given in (["--max-step", "3"], ["--max-step=3"]):
        with pytest.raises(SystemExit) as err:
            _parser().parse_args(given)
        message = capsys.readouterr().err
        assert err.value.code == 2 and "abbreviations are not accepted" in message and "--max-steps?" in message
    assert overrides_from_args(_parser().parse_args(["--max-steps", "3"])) == {"max_steps": "3"}


def test_given_values_become_overrides_of_a_config():
    args = _parser().parse_args(["--lambda-nce", "2", "--nce_idt", "false", "--nce-layers", "rgb,res1",
                                 "--model", "cyclegan", "--flip", "--beta1", "-0.5", "--dataset", "my/folder"])
    overrides = overrides_from_args(args)
    assert overrides == {"model": "cyclegan", "dataset": "my/folder", "lambda_nce": "2", "nce_idt": "false",
                         "nce_layers": "rgb,res1", "beta1": "-0.5", "flip": "true"}
    cfg = C.override(C.TrainConfig(), **overrides)
    assert (cfg.model, cfg.lambda_nce, cfg.nce_idt, cfg.nce_layers, cfg.flip, cfg.beta1) == (
        "cyclegan", 2.0, False, ("rgb", "res1"), True, -0.5)
    assert overrides_from_args(_parser().parse_args([])) == {}
    with pytest.raises(ValueError, match="must be one of"):
        C.override(C.TrainConfig(), **overrides_from_args(_parser().parse_args(["--model", "cat"])))
    with pytest.raises(TypeError, match="true or false"):
        C.override(C.TrainConfig(), **overrides_from_args(_parser().parse_args(["--flip", "maybe"])))


def test_exclude_hide_and_conflicts(wide):
    p = ConfigParser(prog="prog")
    p.add_argument("--seed", type=int, default=0)
    added = add_config_options(p, exclude=("seed",), hide=("crop_size",))
    assert "seed" not in added and "crop_size" in added and len(added) == len(C.FIELDS) - 1
    args = p.parse_args(["--crop-size", "64"])
    assert args.seed == 0 and overrides_from_args(args) == {"crop_size": "64"}  # the command's own --seed is not one
    assert "--crop-size" not in p.format_help()
    with pytest.raises(ValueError, match="exclude=\\('seed',\\)"):
        add_config_options(_with_seed())
    with pytest.raises(ValueError, match="did you mean 'seed'"):
        add_config_options(ConfigParser(), exclude=("sed",))


def _with_seed() -> ConfigParser:
    p = ConfigParser(prog="prog")
    p.add_argument("--seed")
    return p


def test_usage_sums_the_settings_up_and_plain_namespaces_are_refused():
    usage = _parser().format_usage()
    assert "[--SETTING VALUE ...]" in usage and "--lambda-nce" not in usage
    with pytest.raises(ValueError, match="add_config_options"):
        overrides_from_args(argparse.Namespace(lr="1"))


def _run_cli(command: str, *args: str) -> subprocess.CompletedProcess:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "COLUMNS": "3000", "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "cutlib", command, *args], capture_output=True, text=True, env=env)


def test_bench_help_lists_the_training_settings():
    done = _run_cli("bench", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "--lambda-nce FLOAT weight of PatchNCE (CUT 1, FastCUT 10) (default: 1.0)" in text
    assert "--num-patches INT sampled locations per layer per image (P) (default: 256)" in text
    assert "--flip-equivariance [true|false] FastCUT: flip the input with p = 0.5, flip features back (default: false)" in text
    for name in set(C.FIELDS) - {"crop_size", "load_size", "device", "seed"}:
        assert "--" + name.replace("_", "-") + " " in text, name
    assert "--crop-size" not in text and "--load-size" not in text  # bench sets these (from --size) ...
    assert "--device STR" not in text and "--seed INT" not in text  # ... and has its own --device and --seed
    done = _run_cli("bench", "--max-step", "3")
    assert done.returncode == 2 and "did you mean --max-steps?" in done.stderr


def test_train_help_lists_every_field_and_unknown_options_name_the_nearest(tmp_path):
    done = _run_cli("train", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for name, f in C.FIELDS.items():
        assert "--" + name.replace("_", "-") + " " in text, name
    assert "--lambda-nce FLOAT weight of PatchNCE (CUT 1, FastCUT 10) (default: 1.0)" in text
    assert "--resume" in text and "--preset" in text and "--out" in text
    done = _run_cli("train", "--out", str(tmp_path / "run"), "--lamda-nce", "2")
    assert done.returncode == 2 and "did you mean --lambda-nce?" in done.stderr
    done = _run_cli("train", "--out", str(tmp_path / "run"), "--max-step", "2")
    assert done.returncode == 2 and "abbreviations are not accepted" in done.stderr
    assert not (tmp_path / "run").exists()  # nothing was started
