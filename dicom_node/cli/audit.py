"""``gazex audit``: list and filter the audit trail (see ``dicom_node.audit``)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from dicom_node import db
from dicom_node.audit import KINDS, as_dict, query
from dicom_node.cli.table import print_table
from dicom_node.db.models import AuditEvent
from dicom_node.settings import load_settings
from dicom_node.spool import short_hash


def parse_since(value: str) -> datetime:
    """An ISO 8601 date or date-time; without a zone it is UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO date or date-time (e.g. 2026-11-23T08:00)"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``gazex audit``."""
    audit = subparsers.add_parser(
        "audit",
        help="list the audit trail (associations, studies, results, configuration changes)",
        description="List audit events, oldest first (the newest --limit of them).",
    )
    audit.add_argument("--kind", choices=KINDS, help="only events of this kind")
    audit.add_argument("--ae", dest="ae_title", metavar="AE", help="only events about this AE")
    audit.add_argument(
        "--since", type=parse_since, metavar="ISO", help="only events at or after (UTC default)"
    )
    audit.add_argument("--limit", type=_positive, default=100, metavar="N", help="default 100")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    sessions = db.open_sessions(load_settings(args.config).database_url)
    rows = query(
        sessions, kind=args.kind, ae_title=args.ae_title, since=args.since, limit=args.limit
    )
    if args.json:
        for row in rows:
            print(json.dumps(as_dict(row), ensure_ascii=False))
        return 0
    header = ("TIME (UTC)", "KIND", "ACTION", "AE", "ADDRESS", "WHO", "DETAIL")
    table = [
        (
            row.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            row.kind,
            row.action,
            row.ae_title or "-",
            row.address or "-",
            row.actor or "-",
            _detail(row),
        )
        for row in rows
    ]
    print_table(header, table)
    if not rows:
        print("(no audit events match)", file=sys.stderr)
    return 0


def _detail(row: AuditEvent) -> str:
    parts = [row.detail] if row.detail else []
    if row.StudyInstanceUID:
        # The short id the logs and `gazex status` use, then the UID to find it in a PACS.
        parts.append(f"study {short_hash(row.StudyInstanceUID)} ({row.StudyInstanceUID})")
    if row.SOPInstanceUID:
        parts.append(f"instance {row.SOPInstanceUID}")
    return "; ".join(parts) or "-"
