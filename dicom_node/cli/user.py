"""``gazex user``: the accounts of the review page (add, list, passwd, disable, enable).

Passwords are asked for at the terminal (twice), or read from ``--password-file`` (``-``:
standard input), never taken on the command line. Every change is audited with the OS user
who made it; passwords never reach the audit trail, the logs or the output.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from dicom_node import db
from dicom_node.audit import AuditLog
from dicom_node.cli.table import print_table
from dicom_node.errors import AccountError
from dicom_node.review.accounts import ROLES, Accounts, UserInfo
from dicom_node.settings import load_settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``gazex user ...``."""
    user = subparsers.add_parser(
        "user",
        help="accounts of the review page (/review on the HTTP port)",
        description="Radiologists and admins who log in to the review page. Only argon2id "
        "hashes of their passwords are kept; every change is audited.",
    )
    sub = user.add_subparsers(dest="user_command", required=True)

    add = sub.add_parser("add", help="add an account")
    add.add_argument("name", help="the login name (1-64 letters, digits or . _ @ -)")
    add.add_argument("--role", required=True, choices=ROLES, help="what the account may do")
    _password_argument(add)
    add.set_defaults(func=cmd_user_add)

    sub.add_parser("list", help="list accounts (never the passwords)").set_defaults(
        func=cmd_user_list
    )

    passwd = sub.add_parser("passwd", help="set a new password (ends the account's sessions)")
    passwd.add_argument("name", help="the account")
    _password_argument(passwd)
    passwd.set_defaults(func=cmd_user_passwd)

    disable = sub.add_parser("disable", help="refuse its logins and end its sessions")
    disable.add_argument("name", help="the account")
    disable.set_defaults(func=cmd_user_disable)

    enable = sub.add_parser("enable", help="allow its logins again")
    enable.add_argument("name", help="the account")
    enable.set_defaults(func=cmd_user_enable)


def _password_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        type=Path,
        help="a file whose first line is the password ('-': standard input); "
        "default: asked for at the terminal, twice",
    )


def _password(args: argparse.Namespace) -> str:
    path: Path | None = args.password_file
    if path is not None:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        lines = text.splitlines()
        return lines[0] if lines else ""
    password = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != password:
        raise AccountError("the two passwords differ")
    return password


def accounts(args: argparse.Namespace) -> Accounts:
    settings = load_settings(args.config)
    sessions = db.open_sessions(settings.database_url)
    return Accounts(sessions, audit=AuditLog(sessions, settings.audit_path))


def _print_users(users: list[UserInfo]) -> None:
    print_table(
        ("NAME", "ROLE", "ENABLED", "CREATED", "LAST LOGIN"),
        [
            (
                u.name,
                u.role,
                "yes" if u.enabled else "no",
                u.created_at.strftime("%Y-%m-%d %H:%M"),
                u.last_login_at.strftime("%Y-%m-%d %H:%M") if u.last_login_at else "never",
            )
            for u in users
        ],
    )


def cmd_user_add(args: argparse.Namespace) -> int:
    store = accounts(args)
    _print_users([store.add(args.name, args.role, _password(args))])
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    _print_users(accounts(args).list())
    return 0


def cmd_user_passwd(args: argparse.Namespace) -> int:
    store = accounts(args)
    store.get(args.name)  # an unknown name fails before the password is asked for
    store.set_password(args.name, _password(args))
    print(f"password of {args.name} changed; its sessions ended")
    return 0


def cmd_user_disable(args: argparse.Namespace) -> int:
    accounts(args).set_enabled(args.name, False)
    print(f"{args.name} disabled; its sessions ended")
    return 0


def cmd_user_enable(args: argparse.Namespace) -> int:
    accounts(args).set_enabled(args.name, True)
    print(f"{args.name} enabled")
    return 0
