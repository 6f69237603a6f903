"""``gazex feedback export``: the radiologists' signed reviews as JSON lines, for
retraining.

One line per signed review (a review whose verified SR was built), oldest first::

    {"StudyInstanceUID", "analysis_revision", "review_revision", "signed_at",
     "model": {"name", "version", "checkpoint_sha256", "trained_on_synthetic_data"},
     "findings": [{"code": {scheme, value, meaning}, "probability", "present", "box"}],
     "decisions": [{finding, meaning, decision, reason?, box?}], "added": [{finding, meaning,
     box}], "reviewer": {"role"} (and "name" with --with-names)}

The model's side is read from the analysis's result JSON in the spool. No patient name or
ID is written: the database holds none, and nothing is read from the image headers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import db
from dicom_node.cli.audit import parse_since
from dicom_node.db.models import Analysis, ReviewState, SignedReview, Study
from dicom_node.settings import load_settings
from dicom_node.spool import Spool, short_hash


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``gazex feedback``."""
    feedback = subparsers.add_parser(
        "feedback",
        help="export the radiologists' decisions on the model's findings",
        description="The radiologists' signed reviews, for retraining.",
    )
    sub = feedback.add_subparsers(dest="feedback_command", metavar="COMMAND", required=True)
    export = sub.add_parser(
        "export",
        help="signed reviews as JSON lines (model output and the reviewer's changes)",
        description="One JSON line per signed review, oldest first. No patient names or IDs; "
        "the reviewer's role only, unless --with-names.",
    )
    export.add_argument(
        "--since", type=parse_since, metavar="DATE", help="signed at or after (UTC default)"
    )
    export.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    export.add_argument(
        "--with-names", action="store_true", help="include the reviewer's account name"
    )
    export.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    sessions = db.open_sessions(settings.database_url)
    spool = Spool(settings.spool_path)
    if args.out:
        with Path(args.out).open("w", encoding="utf-8") as out:
            count = _write(out, export(sessions, spool, args.since, args.with_names))
    else:
        count = _write(sys.stdout, export(sessions, spool, args.since, args.with_names))
    print(f"{count} signed review(s) exported", file=sys.stderr)
    return 0


def _write(out: TextIO, lines: Iterator[dict[str, Any]]) -> int:
    count = 0
    for line in lines:
        out.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")
        count += 1
    return count


def export(
    sessions: sessionmaker[Session],
    spool: Spool,
    since: datetime | None = None,
    with_names: bool = False,
) -> Iterator[dict[str, Any]]:
    """The export's records (see the module docstring)."""
    with sessions() as session:
        query = (
            select(SignedReview, Analysis, Study)
            .join(Analysis, SignedReview.analysis_id == Analysis.id)
            .join(Study, SignedReview.study_id == Study.id)
            .where(SignedReview.state == ReviewState.BUILT)
            .order_by(SignedReview.signed_at, SignedReview.id)
        )
        if since is not None:
            query = query.where(SignedReview.signed_at >= since)
        rows = [
            (review, review.user.name, review.user.role, analysis.revision, study.StudyInstanceUID)
            for review, analysis, study in session.execute(query).all()
        ]
    for review, name, role, revision, StudyInstanceUID in rows:
        result = _result(spool, StudyInstanceUID, revision)
        decisions = json.loads(review.decisions)
        reviewer: dict[str, Any] = {"role": role}
        if with_names:
            reviewer["name"] = name
        yield {
            "StudyInstanceUID": StudyInstanceUID,
            "analysis_revision": revision,
            "review_revision": review.revision,
            "signed_at": review.signed_at.isoformat(),
            "verified_sr": review.SOPInstanceUID,
            "model": result.get("model"),
            "findings": [
                {
                    "code": f.get("code"),
                    "probability": f.get("probability"),
                    "present": f.get("present"),
                    "box": f.get("box"),
                }
                for f in result.get("findings", []) or []
                if isinstance(f, dict)
            ],
            "decisions": decisions.get("decisions", []),
            "added": decisions.get("added", []),
            "reviewer": reviewer,
        }


def _result(spool: Spool, StudyInstanceUID: str, revision: int) -> dict[str, Any]:
    path = spool.absolute(Spool.result_path(StudyInstanceUID, revision))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(
            f"study {short_hash(StudyInstanceUID)} revision {revision}: model result not "
            f"readable ({type(exc).__name__}); exported without it",
            file=sys.stderr,
        )
        return {}
    return data if isinstance(data, dict) else {}
