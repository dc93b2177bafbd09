"""Command-line options generated from (nested) dataclasses.

Every field becomes an option; fields of nested dataclasses are dotted (``--rssm.deter=1024``). Both ``--x=v`` and ``--x v``
work; booleans take ``--flag=true/false`` (a bare ``--flag`` means true); tuples take comma-separated values
(``--encoder.cnn_mults=2,3,4,4``). ``--help`` lists every option with its ``metadata["help"]`` and default.

Order of application: defaults -> ``--preset NAME`` (wherever it appears on the line) -> the other options in the order given ->
``validate()``. Any error (unknown option, unparsable value, value rejected by ``validate``) prints one line
``<prog>: error: ...`` naming the option to stderr and exits with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Sequence

from .config import Config, apply_preset, iter_leaves, set_path


class CLIError(Exception):
    """A user error on the command line (reported as one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump, exit 2
        raise CLIError(message)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, str) and value == "":
        return "''"
    return str(value)


def build_parser(
    default: Any,
    prog: str | None = None,
    description: str | None = None,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """An argparse parser with one ``--dotted.name`` option per leaf field of the dataclass instance ``default``.

    Options default to ``argparse.SUPPRESS``, so the parsed namespace holds only what was given on the command line.
    """
    parser = _Parser(
        prog=prog,
        description=description,
        epilog=epilog,
        usage=f"{prog or '%(prog)s'} [--option=value ...]",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, f, value in iter_leaves(default):
        section = name.rsplit(".", 1)[0] if "." in name else ""
        if section not in groups:
            title = f"{section} options" if section else "run and training options"
            groups[section] = parser.add_argument_group(title)
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {_fmt(value)})".replace("%", "%%")
        kwargs: dict[str, Any] = dict(dest=name, default=argparse.SUPPRESS, help=help_text, metavar=type(value).__name__.upper())
        if isinstance(value, bool):
            kwargs.update(nargs="?", const="true", metavar="true|false")
        groups[section].add_argument(f"--{name}", **kwargs)
    return parser


def _name_option(message: str, options: set[str]) -> str:
    """Turn ``"rssm.deter: must be positive"`` into ``"--rssm.deter: must be positive"`` when it names an option."""
    head = message.split(":", 1)[0].strip()
    if head in options:
        return "--" + message
    return message


def parse(
    argv: Sequence[str] | None = None,
    make_default: Callable[[], Any] = Config,
    apply_preset_fn: Callable[[Any, str], Any] | None = apply_preset,
    prog: str | None = None,
    description: str | None = None,
    epilog: str | None = None,
) -> Any:
    """Parse ``argv`` into a validated dataclass instance; raise :class:`CLIError` (one-line message) on user error.

    ``make_default()`` gives the defaults. If it has a ``preset`` field and ``apply_preset_fn`` is given, the preset named
    on the command line (or the default one) is applied before the other options. ``validate()`` is called when present.
    """
    cfg = make_default()
    parser = build_parser(cfg, prog, description, epilog)
    options = {name for name, _, _ in iter_leaves(cfg)}
    ns = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    given = vars(ns)  # dest -> raw string, in command-line order of first definition
    try:
        if apply_preset_fn is not None and hasattr(cfg, "preset"):
            apply_preset_fn(cfg, given.get("preset", cfg.preset))
        for name, text in given.items():
            if name != "preset":
                set_path(cfg, name, text)
        if hasattr(cfg, "validate"):
            cfg.validate()
    except ValueError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if msg.startswith("preset:"):
            msg = "--" + msg
        raise CLIError(_name_option(msg, options)) from None
    return cfg


def parse_or_exit(argv: Sequence[str] | None = None, prog: str | None = None, **kwargs: Any) -> Any:
    """:func:`parse`, but on a user error print ``<prog>: error: <message>`` to stderr and exit with status 2."""
    try:
        return parse(argv, prog=prog, **kwargs)
    except CLIError as e:
        sys.exit(fail(prog or "dreamer_ext", e, 2))


def fail(prog: str, message: Any, code: int) -> int:
    """Print the one-line ``<prog>: error: <message>`` to stderr; return ``code`` (the exit status)."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return code


def runtime_failure(prog: str, e: BaseException, known: tuple = ()) -> int:
    """A run-time error as one line and exit status 1: an instance of ``known`` (the program's own error types)
    prints its message, anything else its type and message with a hint. ``DREAMER_EXT_TRACEBACK=1`` re-raises
    instead, for debugging."""
    if os.environ.get("DREAMER_EXT_TRACEBACK") == "1":
        raise e
    text = " ".join(str(e).split()) or type(e).__name__
    if not isinstance(e, known):
        text = f"{type(e).__name__}: {text} (DREAMER_EXT_TRACEBACK=1 shows where)"
    return fail(prog, text, 1)
