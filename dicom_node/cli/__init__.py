"""The ``gazex`` command: the parser, logging set-up and the CLI's error translation.

Subcommands come from the ``gazex.commands`` entry-point group: each package registers its
own (``register(subparsers)``), so this module never imports ``workers`` or the model.
Registration must stay cheap: heavy imports happen inside the command functions. The
node's own command groups are one module each: ``serve`` (serve, node), ``status``,
``ae`` (ae, send), ``database`` (db) and ``audit``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, entry_points, version

from dicom_node.errors import GazexError, ModelUnavailable

logger = logging.getLogger(__name__)

Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gazex",
        description="GazeX Node: gaze-guided chest radiograph AI as a DICOM node "
        "(research use only; the shipped model is trained on synthetic data).",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="settings TOML file (default: $GAZEX_CONFIG)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry_point in sorted(entry_points(group="gazex.commands"), key=lambda e: e.name):
        entry_point.load()(subparsers)
    return parser


def _version() -> str:
    try:
        return version("gazex-node")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    func: Command = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        unavailable = ModelUnavailable.missing_extra(exc)
        if unavailable is None:
            raise
        print(f"gazex {args.command}: error: {unavailable}", file=sys.stderr)
        return 1
    except (GazexError, ValueError, OSError) as exc:
        # The message names the key, file or peer at fault. Bad input (a ValueError) exits
        # 2; a peer, disk or network that failed us exits 1.
        print(f"gazex {args.command}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1


def _configure_logging(args: argparse.Namespace) -> None:
    """Text or JSON logs as the ``log`` settings say; defaults when the settings cannot be
    read (the command itself then reports what is wrong with them)."""
    from dicom_node.errors import ConfigError
    from dicom_node.logs import configure_logging
    from dicom_node.settings import LogSettings, load_settings

    try:
        log = load_settings(args.config).log
    except ConfigError:
        log = LogSettings()
    configure_logging(log, verbose=args.verbose)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the node's own subcommands."""
    from dicom_node.cli import ae, audit, database, feedback, serve, status, user

    for group in (serve, status, ae, database, audit, user, feedback):
        group.register(subparsers)
