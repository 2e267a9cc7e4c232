"""The command-line options of the training settings, generated from the TrainConfig dataclass.

    p = ConfigParser(prog="python -m cutlib train", description="...")
    p.add_argument("--preset", default="cut")            # the command's own options
    add_config_options(p)                                 # one --field-name VALUE per TrainConfig field
    args = p.parse_args(argv)
    cfg = config.preset(args.preset, **overrides_from_args(args))

Each option's help is the comment written beside its field in cutlib/config/fields.py (read from the
source with tokenize, so it never drifts from the code), its type and its default; the options are
grouped by the ``# --- section`` comments of the dataclass. Values stay strings: cutlib.config.override
parses and checks them, with the same messages as for Python callers. ConfigParser refuses
abbreviated options and answers an unknown one with the nearest valid spellings.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import io
import re
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from typing import Literal, get_args, get_origin

from cutlib import config as C

CONFIG_FIELDS_DEST = "_config_fields"  # namespace attribute: the fields add_config_options made options of
DEFAULTS_NOTE = "Defaults shown are TrainConfig's; a preset changes some of them (see cutlib.config)."
_SECTION = re.compile(r"#\s*-{2,}\s*(.*?)\s*-*\s*$")
_SECTION_REFS = re.compile(r"\s*\((?:reference page )?sections? [^)]*\)")  # "networks (reference page sections 3, 4)" -> "networks"


@dataclass(frozen=True)
class FieldHelp:
    """What the command line says about one dataclass field."""

    name: str
    section: str  # the "# --- title" comment above the field ("" when none)
    comment: str  # the comment beside the field, or a description generated from its type
    from_source: bool  # False when ``comment`` was generated


def type_text(hint) -> tuple[str, str]:
    """(metavar, description) of a field type: ("INT", "an integer"), ("{a,b}", "one of a, b") ..."""
    origin = get_origin(hint)
    if origin is Literal:
        choices = [str(c) for c in get_args(hint)]
        return "{" + ",".join(choices) + "}", "one of " + ", ".join(choices)
    if origin is tuple:
        return "NAMES", "comma-separated names"
    if origin in (typing.Union, types.UnionType):  # e.g. int | Literal["auto"]
        parts = [type_text(arg) for arg in get_args(hint)]
        return "|".join(m.strip("{}") for m, _ in parts), " or ".join(d for _, d in parts)
    known = {bool: ("true|false", "true or false"), int: ("INT", "an integer"), float: ("FLOAT", "a number"),
             str: ("STR", "a string")}
    return known.get(hint, ("VALUE", "a value"))


def default_text(value) -> str:
    """A default as one would type it on the command line: true/false, lists comma-separated."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def _source_comments(cls) -> dict[str, tuple[str, str]]:
    """{field: (section, comment)} read from the source of ``cls``; {} when the source is not available."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
        tree = ast.parse(source)
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):
        return {}
    lines = source.splitlines()
    trailing, own_line = {}, {}  # line number -> comment text (without "#"), beside code / on a line of its own
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            row = tok.start[0]
            alone = not lines[row - 1][: tok.start[1]].strip()
            (own_line if alone else trailing)[row] = tok.string
    body = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
    found, section = {}, ""
    for node in body.body if body else []:
        for row in sorted(r for r in own_line if r < node.lineno):  # section headers up to this statement
            match = _SECTION.match(own_line.pop(row))
            if match:
                section = _SECTION_REFS.sub("", match.group(1)).strip()
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        beside = [trailing[r] for r in range(node.lineno, node.end_lineno + 1) if r in trailing]
        text = beside[-1].lstrip("#").strip() if beside else ""
        found[node.target.id] = (section, text)
    return found


def field_comments(cls=C.TrainConfig) -> dict[str, FieldHelp]:
    """For every field of the dataclass ``cls`` (in order), its section and the comment written beside it
    in the source; fields without one (or a class whose source is not available) get "name: <type>"."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"field_comments needs a dataclass, got {cls!r}")
    hints = typing.get_type_hints(cls)
    source = _source_comments(cls)
    out = {}
    for f in dataclasses.fields(cls):
        section, text = source.get(f.name, ("", ""))
        out[f.name] = FieldHelp(f.name, section, text or f"{f.name}: {type_text(hints[f.name])[1]}", bool(text))
    return out


def add_config_options(parser: argparse.ArgumentParser, exclude=(), hide=()) -> list[str]:
    """Add one option ``--field-name VALUE`` per TrainConfig field to ``parser`` (``--field_name`` is accepted
    too, not shown), grouped by the config's sections; returns the field names added.

    Every option defaults to None, so that overrides_from_args() knows what was given; values stay strings
    for cutlib.config.override to parse. A bool option given alone (``--flip``) means true.
    ``exclude``: fields the command sets itself (no option). ``hide``: fields still accepted but left out
    of the help (e.g. ones the command refuses with a pointer to its own option)."""
    unknown = [n for n in (*exclude, *hide) if n not in C.FIELDS]
    if unknown:
        near = {n: difflib.get_close_matches(n, C.FIELDS, n=1) for n in unknown}
        hints = "".join(f" ({n!r}: did you mean {v[0]!r}?)" for n, v in near.items() if v)
        raise ValueError(f"exclude/hide name unknown TrainConfig field(s) {unknown}{hints}; valid: {', '.join(C.FIELDS)}")
    docs, defaults, groups, added = field_comments(), C.TrainConfig(), {}, []
    for name, doc in docs.items():
        if name in exclude:
            continue
        if doc.section not in groups:
            title = f"training settings: {doc.section}" if doc.section else "training settings"
            groups[doc.section] = parser.add_argument_group(title, DEFAULTS_NOTE if not groups else None)
        hint = C.field_type(name)
        metavar, _ = type_text(hint)
        default = default_text(getattr(defaults, name))
        text = argparse.SUPPRESS if name in hide else f"{doc.comment} (default: {default})".replace("%", "%%")
        flag = "--" + name.replace("_", "-")
        extra = dict(nargs="?", const="true") if hint is bool else {}
        try:
            groups[doc.section].add_argument(flag, dest=name, default=None, metavar=metavar, help=text, **extra)
            if "_" in name:  # the Python spelling, accepted but not listed twice
                groups[doc.section].add_argument("--" + name, dest=name, default=None, help=argparse.SUPPRESS, **extra)
        except argparse.ArgumentError as err:
            raise ValueError(f"{err}; the parser already has this option: pass exclude=({name!r},) to "
                             "add_config_options if the command sets that field itself") from None
        added.append(name)
    parser.set_defaults(**{CONFIG_FIELDS_DEST: tuple(added)})
    return added


def overrides_from_args(args: argparse.Namespace) -> dict[str, str]:
    """{field: value} of the config options that were given on the command line (strings, in field order)."""
    names = getattr(args, CONFIG_FIELDS_DEST, None)
    if names is None:
        raise ValueError("these arguments were not parsed by a parser set up with add_config_options(parser)")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


class ConfigParser(argparse.ArgumentParser):
    """An ArgumentParser that refuses abbreviated options and answers an unknown option with the nearest
    valid ones ("unknown option --lamda-nce: did you mean --lambda-nce?"), exit status 2. Its usage line
    sums the config options up as [--SETTING VALUE ...] instead of listing them all."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self._unknown_message(extras))
        return parsed

    def _valid_options(self) -> list[str]:
        return [s for a in self._actions for s in a.option_strings]

    def _unknown_message(self, extras: list[str]) -> str:
        options = [e.split("=", 1)[0] for e in extras if e.startswith("-") and not _is_number(e)]
        if not options:
            return f"unexpected argument(s): {' '.join(extras)} (every value follows its --option)"
        valid = self._valid_options()
        messages = []
        for option in options:
            prefixed = [v for v in valid if v.startswith(option) and v.startswith("--") == option.startswith("--")]
            dashed = option[:2] + option[2:].replace("_", "-")
            near = prefixed + _closest(dashed, valid)
            dash = lambda v: v.replace("_", "-") if v.replace("_", "-") in valid else v  # noqa: E731
            near = list(dict.fromkeys(map(dash, near)))[:3]  # the --dash-spelling of a suggestion, once
            text = f"unknown option {option}"
            if prefixed:
                text += " (abbreviations are not accepted: spell options in full)"
            text += f": did you mean {' or '.join(near)}?" if near else "; see --help for the valid options"
            messages.append(text)
        return "; ".join(messages)

    def _is_config_action(self, action) -> bool:
        return bool(action.option_strings) and action.dest in (self.get_default(CONFIG_FIELDS_DEST) or ())

    def _short_usage(self) -> str | None:
        if self.usage is not None or not self.get_default(CONFIG_FIELDS_DEST):
            return self.usage
        formatter = self._get_formatter()
        own = [a for a in self._actions if not self._is_config_action(a)]
        formatter.add_usage(None, own, self._mutually_exclusive_groups, prefix="")
        return formatter.format_help().strip() + " [--SETTING VALUE ...]"

    def format_usage(self) -> str:
        return self._with_usage(super().format_usage)

    def format_help(self) -> str:
        return self._with_usage(super().format_help)

    def _with_usage(self, make) -> str:
        saved, self.usage = self.usage, self._short_usage()
        try:
            return make()
        finally:
            self.usage = saved


def _closest(word: str, candidates: list[str], cutoff: float = 0.6, margin: float = 0.05) -> list[str]:
    """The candidates most similar to ``word`` (difflib ratio >= cutoff and within ``margin`` of the best)."""
    scored = sorted(((difflib.SequenceMatcher(None, word, c).ratio(), c) for c in candidates), reverse=True)
    scored = [(r, c) for r, c in scored if r >= cutoff]
    return [c for r, c in scored if r >= scored[0][0] - margin][:3] if scored else []


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
