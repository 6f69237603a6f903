"""``gazex db upgrade``: bring the database schema to the newest migration."""

from __future__ import annotations

import argparse

from dicom_node import db
from dicom_node.settings import load_settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    database = subparsers.add_parser("db", help="database schema")
    database_sub = database.add_subparsers(dest="db_command", required=True)
    upgrade = database_sub.add_parser("upgrade", help="apply migrations up to the newest")
    upgrade.set_defaults(func=cmd_db_upgrade)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    db.upgrade(load_settings(args.config).database_url)
    print("database schema is up to date")
    return 0
