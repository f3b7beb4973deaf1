"""The command line's options, read off the config dataclasses.

A field of :class:`~advnlp.cli.config.TrainConfig` or :class:`~advnlp.cli.data.DataSpec` that
the command line sets carries an :class:`Option` in its metadata (``field = option(default,
help=...)``): its flag is the field's name with dashes, its default the field's, and the
option holds only what argparse needs beyond those (help, type, choices, the help section).
The parser adds every such field (:func:`add_options`), and :func:`option_values` reads them
back by name, so a new option is one field. A task's own options are fields of
``TrainConfig`` too, described in the task's folder (``Task.options``).

The way Hugging Face builds argparse from dataclasses (``HfArgumentParser``), in the small.
"""
from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Option:
    """How one config field is given on the command line.

    ``section``: the help section it is listed under (a key of the parser's sections; None:
    the command places it itself). ``flags``: the flags (default ``--field-name``).
    ``toggle``: for a three-valued field (None / True / False), two flags that set it, as
    ``((flag, value, help), ...)``, mutually exclusive."""
    help: Optional[str] = None
    section: Optional[str] = "model"
    type: Optional[Callable] = None
    choices: Optional[Sequence] = None
    metavar: Optional[str] = None
    flags: Tuple[str, ...] = ()
    toggle: Tuple[Tuple[str, object, str], ...] = ()


def option(default=MISSING, *, default_factory=MISSING, **spec):
    """A dataclass field the command line sets: ``option(16, help=...)``."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"option": Option(**spec)})


def described(cls) -> Dict[str, Tuple[object, Option]]:
    """``{field name: (default, Option)}`` of the fields of ``cls`` the command line sets, in
    declaration order."""
    out = {}
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("option")
        if spec is not None:
            out[f.name] = (default_of(f), spec)
    return out


def default_of(f: dataclasses.Field):
    return f.default if f.default is not MISSING else f.default_factory()


def field_default(cls, name: str):
    """The default of the field ``name`` of the dataclass ``cls``."""
    return default_of(next(f for f in dataclasses.fields(cls) if f.name == name))


def add_option(container, name: str, default, spec: Option) -> None:
    """One field's flag(s) on an argparse parser or group."""
    if spec.toggle:
        both = container.add_mutually_exclusive_group()
        for flag, value, text in spec.toggle:
            both.add_argument(flag, dest=name, action="store_const", const=value, help=text)
        container.set_defaults(**{name: default})
        return
    flags = spec.flags or ("--" + name.replace("_", "-"),)
    kwargs = {"dest": name, "help": spec.help}
    if default is False and spec.type is None:  # a switch
        container.add_argument(*flags, action="store_true", **kwargs)
        return
    kwargs["default"] = default
    kind = spec.type or (type(default) if isinstance(default, (int, float)) else None)
    if kind is not None:
        kwargs["type"] = kind
    if spec.choices is not None:
        kwargs["choices"] = tuple(spec.choices)
    if spec.metavar is not None:
        kwargs["metavar"] = spec.metavar
    container.add_argument(*flags, **kwargs)


def add_options(container, cls, section: Optional[str]) -> None:
    """Every field of ``cls`` listed under ``section``, in declaration order."""
    for name, (default, spec) in described(cls).items():
        if spec.section == section:
            add_option(container, name, default, spec)


def option_values(args, cls) -> dict:
    """The fields of ``cls`` the command line sets, from parsed ``args`` (those it has)."""
    return {name: getattr(args, name) for name in described(cls) if hasattr(args, name)}


__all__ = ["Option", "add_option", "add_options", "described", "field_default", "option",
           "option_values"]
