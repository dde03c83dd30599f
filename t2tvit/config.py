"""Typed settings whose fields are also their command line: one declaration per option.

A settings class is a dataclass whose fields are declared with :func:`option` (default, help text,
argparse details). :func:`config_parser` builds the ``argparse`` parser from the fields, so a flag,
its default and its help live in one place; :func:`parse_config` turns a command line (with an
optional ``--config`` YAML recipe whose values become defaults that explicit flags override) into an
instance; :meth:`Config.load` does the same from Python values, for callers that are not a command
line (the pipeline). The trainer's :class:`~t2tvit.train_config.TrainConfig` is one; distillation's
:class:`~compress.distill.DistillConfig` extends it.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .errors import ConfigError

__all__ = ["Config", "config_parser", "option", "parse_command", "parse_config", "recipe_text", "with_default"]

C = TypeVar("C", bound="Config")


def option(
    default: Any = None,
    help: str | None = None,  # noqa: A002 - argparse's own name for it
    *,
    flags: Sequence[str] = (),
    type: Any = None,  # noqa: A002
    choices: Sequence[Any] | None = None,
    nargs: int | str | None = None,
    metavar: str | None = None,
    negative: str | None = None,
    negative_help: str | None = None,
    positional: bool = False,
    cli: bool = True,
    group: str = "",
) -> Any:
    """A settings field and its flag. ``flags``: the option strings (default ``--field-name``); ``type``:
    argparse's converter (default: the default value's type); a ``bool`` field is a switch (``store_true``;
    ``negative`` names the flag that turns it off, e.g. ``--no-model-ema``); ``positional``: an optional
    positional argument; ``cli=False``: recorded in the settings but set by the program, not by a flag."""
    meta = {
        "help": help,
        "flags": tuple(flags),
        "type": type,
        "choices": tuple(choices) if choices is not None else None,
        "nargs": nargs,
        "metavar": metavar,
        "negative": negative,
        "negative_help": negative_help,
        "positional": positional,
        "cli": cli,
        "group": group,
    }
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def with_default(cls: type, name: str, default: Any) -> Any:
    """The field ``name`` of ``cls`` with another default (a subclass's own default of an inherited option)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return option(default, **dict(f.metadata))


@dataclasses.dataclass
class Config:
    """Base of the settings classes: ``PROG`` and ``DESCRIPTION`` head the generated ``--help``."""

    PROG: ClassVar[str] = ""
    DESCRIPTION: ClassVar[str] = ""
    GROUPS: ClassVar[Sequence[str]] = ()  # help-section titles, in order

    @classmethod
    def load(cls: type[C], config: str | None = None, **values: Any) -> C:
        """The defaults, then the recipe ``config`` (a bundled name or a YAML file, as ``--config``), then
        ``values`` by field name; a name the settings do not have is a :class:`ConfigError`."""
        unknown = sorted(set(values) - _names(cls))
        if unknown:
            raise ConfigError(f"{cls.PROG or cls.__name__} has no option {', '.join(unknown)}")
        recipe = _recipe(cls, config) if config else {}
        if config and "config" in _names(cls):
            recipe["config"] = config  # recorded with the run, as --config is
        return cls(**{**recipe, **values})

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field ``name`` (what an unchanged flag gives)."""
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

    def record(self) -> dict[str, Any]:
        """The settings as plain values (what a run folder's ``args.json`` and a checkpoint keep)."""
        plain = (str, int, float, bool, list, type(None))
        return {k: v for k, v in dataclasses.asdict(self).items() if isinstance(v, plain)}


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _recipe(cls: type, path: str) -> dict[str, Any]:
    """A recipe's values by field name (keys may be spelled with dashes, as the flags are)."""
    values = {k.replace("-", "_"): v for k, v in _read_yaml(path).items()}
    unknown = sorted(set(values) - _names(cls))
    if unknown:
        raise ConfigError(f"config {path} has unknown keys: {', '.join(unknown)}")
    return values


def _read_yaml(path: str) -> dict[str, Any]:
    import yaml

    candidate = Path(path)
    if not candidate.is_file() and not candidate.suffix:  # a bundled config by name, e.g. --config digits
        bundled = resources.files("t2tvit") / "configs" / f"{path}.yaml"
        if bundled.is_file():
            return yaml.safe_load(bundled.read_text()) or {}
    if not candidate.is_file():
        names = sorted(f.name[:-5] for f in (resources.files("t2tvit") / "configs").iterdir() if f.name[-5:] == ".yaml")
        raise ConfigError(f"config file {path} does not exist (bundled configs: {', '.join(names)})")
    with open(candidate) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of flag names to values")
    return data


def config_parser(cls: type[Config], **kwargs: Any) -> argparse.ArgumentParser:
    """The command line of ``cls``: one flag per field (``option``'s metadata), grouped as ``cls.GROUPS``."""
    p = argparse.ArgumentParser(
        prog=cls.PROG, description=cls.DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kwargs
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings (defaults, then --config, then flags) as a YAML recipe and exit",
    )
    groups = {"": p, **{title: p.add_argument_group(title) for title in cls.GROUPS}}
    for f in dataclasses.fields(cls):
        m = f.metadata
        if not m.get("cli", False):
            continue
        default = cls.default(f.name)
        where = groups[m["group"]]
        help_text = m["help"] if m["help"] is not None else ""
        if m["positional"]:
            where.add_argument(f.name, metavar=m["metavar"], nargs="?", default=default, help=help_text)
            continue
        flags = m["flags"] or (f"--{f.name.replace('_', '-')}",)
        if isinstance(default, bool) or (m["negative"] and default is None):
            where.add_argument(*flags, dest=f.name, action="store_true", default=default, help=help_text)
            if m["negative"]:
                where.add_argument(m["negative"], dest=f.name, action="store_false", help=m["negative_help"])
            continue
        kind = m["type"] or (type(default) if default is not None and not isinstance(default, list) else None)
        extra = {k: m[k] for k in ("choices", "nargs", "metavar") if m[k] is not None}
        where.add_argument(*flags, dest=f.name, type=kind, default=default, help=help_text, **extra)
    return p


def parse_config(cls: type[C], argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> C:
    """``cls`` from a command line; ``--config`` values become defaults that explicit flags override."""
    return parse_command(cls, argv, parser)[0]


def parse_command(
    cls: type[C], argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> tuple[C, bool]:
    """:func:`parse_config`, and whether the command line asked for ``--print-config`` (as argparse read it,
    abbreviations included) instead of a run."""
    parser = parser or config_parser(cls)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**_recipe(cls, known.config))
    values = vars(parser.parse_args(argv))
    show = bool(values.pop("print_config", False))  # what the command does with the settings, not one of them
    return cls(**values), show


def recipe_text(config: Config) -> str:
    """``config`` as a YAML recipe that ``--config`` reads back (the fields a flag sets; ``config`` itself
    is folded in already)."""
    import yaml

    flags = {f.name for f in dataclasses.fields(config) if f.metadata.get("cli") and f.name != "config"}
    return yaml.safe_dump({k: v for k, v in config.record().items() if k in flags}, sort_keys=False)
