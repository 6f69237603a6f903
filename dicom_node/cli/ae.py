"""``gazex ae``: the peer table (add, list, edit, remove, echo), and ``gazex send``."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from dicom_node import db, outbox, scu, stow_client
from dicom_node.audit import AuditLog
from dicom_node.cli.table import print_table
from dicom_node.dicomweb.auth import Credentials
from dicom_node.errors import DeliveryError, PeerError
from dicom_node.peers import PeerDirectory, PeerInfo, parse_roles
from dicom_node.settings import Settings, load_settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``gazex ae ...`` and ``gazex send``."""
    ae = subparsers.add_parser("ae", help="remote application entities (peers)")
    ae_sub = ae.add_subparsers(dest="ae_command", required=True)

    add = ae_sub.add_parser(
        "add",
        help="add a peer",
        description="Add a peer: a PACS or modality that sends studies (source), receives "
        "the results (destination), or both. A sender that is a destination gets the results "
        "of what it sent.",
    )
    add.add_argument("name", help="a name of yours for the peer (e.g. PACS)")
    add.add_argument(
        "--ae-title",
        required=True,
        help="its AE title (1-16 characters); a DICOMweb peer acts under it in routing rules",
    )
    add.add_argument("--host", help="its host name or address (DICOM)")
    add.add_argument("--port", type=int, help="its DICOM port")
    _add_dicomweb_arguments(add)
    add.add_argument("--role", required=True, help="source, destination or source,destination")
    add.add_argument("--disabled", action="store_true", help="add it disabled")
    add.set_defaults(func=cmd_ae_add)

    ae_sub.add_parser("list", help="list peers").set_defaults(func=cmd_ae_list)

    edit = ae_sub.add_parser(
        "edit",
        help="change a peer",
        description="Change what is given; the rest stays. Applies to the next association.",
    )
    edit.add_argument("name", help="the peer to change (see gazex ae list)")
    edit.add_argument("--rename", dest="new_name", metavar="NAME", help="a new name")
    edit.add_argument("--ae-title", help="a new AE title")
    edit.add_argument("--host", help="a new host name or address")
    edit.add_argument("--port", type=int, help="a new DICOM port")
    _add_dicomweb_arguments(edit)
    edit.add_argument("--role", help="source, destination or source,destination")
    toggle = edit.add_mutually_exclusive_group()
    toggle.add_argument(
        "--enable", dest="enabled", action="store_const", const=True, help="accept and send again"
    )
    toggle.add_argument(
        "--disable",
        dest="enabled",
        action="store_const",
        const=False,
        help="refuse its associations and send it nothing (its rows wait in the outbox)",
    )
    edit.set_defaults(func=cmd_ae_edit)

    remove = ae_sub.add_parser("remove", help="remove a peer")
    remove.add_argument("name", help="the peer to remove")
    remove.set_defaults(func=cmd_ae_remove)

    _register_credentials(ae_sub)

    echo = ae_sub.add_parser("echo", help="C-ECHO a peer and print status and round trip")
    echo.add_argument("name", help="the peer to echo")
    echo.set_defaults(func=cmd_ae_echo)

    send = subparsers.add_parser(
        "send", help="send files to a destination peer (C-STORE, or STOW-RS to a DICOMweb one)"
    )
    send.add_argument("name", help="peer name (see gazex ae list)")
    send.add_argument("files", nargs="+", type=Path, help="DICOM files or folders")
    send.set_defaults(func=cmd_send)


def _add_dicomweb_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dicomweb-url",
        metavar="URL",
        help="its DICOMweb base URL (e.g. https://pacs:8042/dicom-web): results go there by "
        "STOW-RS instead of C-STORE",
    )
    parser.add_argument(
        "--dicomweb-auth-file",
        metavar="FILE",
        type=Path,
        help="a file holding what the node presents to that URL, basic:<user>:<password> or "
        "bearer:<token> ('-': read it from standard input; never on the command line)",
    )


def _read_secret_file(path: Path | None) -> str | None:
    if path is None:
        return None
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    return text.strip()


def _register_credentials(
    ae_sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """``gazex ae credential add|list|remove``: what peers present to the node's DICOMweb."""
    credential = ae_sub.add_parser(
        "credential",
        help="credentials a peer presents to the node's DICOMweb",
        description="A peer that reads or stores over DICOMweb presents one of these on every "
        "request and acts as that peer (its AE title, its routing). Only argon2 hashes are "
        "kept. The peer needs the source role and must be enabled.",
    )
    sub = credential.add_subparsers(dest="credential_command", required=True)
    add = sub.add_parser("add", help="add a user name and password, or a bearer token")
    add.add_argument("peer", help="the peer (see gazex ae list)")
    what = add.add_mutually_exclusive_group(required=True)
    what.add_argument("--basic", metavar="USER", help="HTTP basic: a user name for the peer")
    what.add_argument(
        "--token", action="store_true", help="a new bearer token, printed once: keep it"
    )
    add.add_argument(
        "--password-file",
        metavar="FILE",
        type=Path,
        help="with --basic: a file holding the password ('-': standard input); "
        "default: asked for at the terminal",
    )
    add.set_defaults(func=cmd_credential_add)
    listing = sub.add_parser("list", help="list credentials (never the secrets)")
    listing.add_argument("peer", nargs="?", help="only this peer's")
    listing.set_defaults(func=cmd_credential_list)
    remove = sub.add_parser("remove", help="remove a credential: refused from the next request")
    remove.add_argument("peer", help="the peer")
    remove.add_argument("name", help="the user name, or the token's key id (see list)")
    remove.set_defaults(func=cmd_credential_remove)


def credentials(settings: Settings) -> Credentials:
    sessions = db.open_sessions(settings.database_url)
    return Credentials(sessions, audit=AuditLog(sessions, settings.audit_path))


def cmd_credential_add(args: argparse.Namespace) -> int:
    store = credentials(load_settings(args.config))
    if args.token:
        info, token = store.add_token(args.peer)
        print(f"bearer token for {info.peer} (key id {info.name}); shown once:")
        print(token)
        return 0
    password = _read_secret_file(args.password_file)
    if password is None:
        password = getpass.getpass(f"password for {args.basic}: ")
        if getpass.getpass("again: ") != password:
            raise PeerError("the two passwords differ")
    info = store.add_basic(args.peer, args.basic, password)
    print(f"basic credential {info.name} added for {info.peer}")
    return 0


def cmd_credential_list(args: argparse.Namespace) -> int:
    rows = credentials(load_settings(args.config)).list(args.peer)
    print_table(
        ("PEER", "KIND", "NAME", "CREATED", "LAST USED"),
        [
            (
                c.peer,
                c.kind,
                c.name,
                c.created_at.strftime("%Y-%m-%d %H:%M"),
                c.last_used_at.strftime("%Y-%m-%d %H:%M") if c.last_used_at else "never",
            )
            for c in rows
        ],
    )
    return 0


def cmd_credential_remove(args: argparse.Namespace) -> int:
    credentials(load_settings(args.config)).remove(args.peer, args.name)
    print(f"removed {args.name} of {args.peer}")
    return 0


def peer_directory(settings: Settings) -> PeerDirectory:
    """Peers with every change audited (table and JSON lines)."""
    sessions = db.open_sessions(settings.database_url)
    return PeerDirectory(sessions, audit=AuditLog(sessions, settings.audit_path))


def _print_peers(peers: list[PeerInfo]) -> None:
    print_table(
        ("NAME", "AE TITLE", "ADDRESS", "ROLES", "ENABLED"),
        [
            (
                p.name,
                p.ae_title,
                p.address,
                ",".join(p.roles),
                "yes" if p.enabled else "no",
            )
            for p in peers
        ],
    )


def cmd_ae_add(args: argparse.Namespace) -> int:
    peers = peer_directory(load_settings(args.config))
    peer = peers.add(
        args.name,
        args.ae_title,
        args.host,
        args.port,
        parse_roles(args.role),
        not args.disabled,
        dicomweb_url=args.dicomweb_url,
        dicomweb_auth=_read_secret_file(args.dicomweb_auth_file),
    )
    _print_peers([peer])
    return 0


def cmd_ae_list(args: argparse.Namespace) -> int:
    _print_peers(peer_directory(load_settings(args.config)).all())
    return 0


def cmd_ae_edit(args: argparse.Namespace) -> int:
    peers = peer_directory(load_settings(args.config))
    peer = peers.edit(
        args.name,
        ae_title=args.ae_title,
        host=args.host,
        port=args.port,
        roles=None if args.role is None else parse_roles(args.role),
        enabled=args.enabled,
        new_name=args.new_name,
        dicomweb_url=args.dicomweb_url,
        dicomweb_auth=_read_secret_file(args.dicomweb_auth_file),
    )
    _print_peers([peer])
    return 0


def cmd_ae_remove(args: argparse.Namespace) -> int:
    peer_directory(load_settings(args.config)).remove(args.name)
    print(f"removed {args.name}")
    return 0


def cmd_ae_echo(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    peer = peer_directory(settings).get(args.name)
    node = settings.node
    if peer.host is None:
        # DICOMweb only: a QIDO-RS search with its credentials stands in for C-ECHO.
        try:
            http_status, elapsed_ms = stow_client.echo(peer, scu.Timeouts.of(node))
        except DeliveryError as exc:
            print(f"{peer.name}: DICOMweb echo failed: {exc}", file=sys.stderr)
            return 1
        print(f"{peer.name} ({peer.address}): HTTP {http_status}, {elapsed_ms:.1f} ms")
        return 0 if http_status < 400 else 1
    try:
        status, elapsed_ms = scu.echo(peer, node.ae_title, scu.Timeouts.of(node))
    except DeliveryError as exc:
        print(f"{peer.name}: C-ECHO failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"{peer.name} ({peer.ae_title}@{peer.host}:{peer.port}): status 0x{status:04X}, "
        f"{elapsed_ms:.1f} ms"
    )
    return 0 if status == 0 else 1


def _expand(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return files


def cmd_send(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    peer = peer_directory(settings).get(args.name)
    if "destination" not in peer.roles:
        print(f"note: {peer.name} is not a destination peer; sending anyway", file=sys.stderr)
    results = outbox.send(peer, _expand(args.files), settings.node)
    for result in results:
        outcome = f"0x{result.status:04X}" if result.status is not None else result.error
        print(f"{'ok  ' if result.ok else 'FAIL'} {result.path}: {outcome}")
    failed = sum(not r.ok for r in results)
    print(f"{len(results) - failed} sent, {failed} failed")
    return 0 if failed == 0 else 1
