"""``gazex hl7`` subcommands: ``listen`` (print and ACK what arrives) and ``send``.

    gazex hl7 listen --port 2575 [--host 127.0.0.1] [--ack AA|AE|AR]
    gazex hl7 send --host H --port P --message MSG.hl7
    gazex hl7 send --host H --port P --result RESULT.json --source IMAGE.dcm \\
        --sending-application GAZEX --sending-facility NODE \\
        --receiving-application RIS --receiving-facility HOSPITAL

``send`` exits 0 on AA, 2 on AE/AR/mismatched ACK (a ValueError), 1 when no ACK came
(an OSError), through dicom_node.cli's translation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("hl7", help="HL7 v2 over MLLP: listen, send")
    commands = parser.add_subparsers(dest="hl7_command", metavar="HL7_COMMAND", required=True)

    listen = commands.add_parser(
        "listen", help="print every HL7 message received over MLLP and acknowledge it"
    )
    listen.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    listen.add_argument("--port", type=int, required=True)
    listen.add_argument(
        "--ack", choices=["AA", "AE", "AR"], default="AA", help="answer code (default: AA)"
    )
    listen.set_defaults(func=listen_command)

    send = commands.add_parser("send", help="send an HL7 message over MLLP and check its ACK")
    send.add_argument("--host", required=True)
    send.add_argument("--port", type=int, required=True)
    what = send.add_mutually_exclusive_group(required=True)
    what.add_argument("--message", type=Path, metavar="MSG.hl7", help="an ER7 message file")
    what.add_argument("--result", type=Path, metavar="RESULT.json", help="build an ORU^R01")
    send.add_argument("--source", type=Path, metavar="IMAGE.dcm", help="with --result")
    send.add_argument("--revision", type=int, default=1)
    send.add_argument("--sending-application", default="GAZEX")
    send.add_argument("--sending-facility", default="GAZEX_NODE")
    send.add_argument("--receiving-application", default="RIS")
    send.add_argument("--receiving-facility", default="RADIOLOGY")
    send.add_argument("--connect-timeout", type=float, default=5.0)
    send.add_argument("--read-timeout", type=float, default=30.0)
    send.add_argument("--retries", type=int, default=3)
    send.set_defaults(func=send_command)


def listen_command(args: argparse.Namespace) -> int:
    from workers.hl7.mllp import MLLPListener, Verdict

    def show(message: str) -> Verdict:
        print(message.replace("\r", "\n").rstrip("\n"), end="\n\n", flush=True)
        return Verdict(
            args.ack, "" if args.ack == "AA" else f"answered {args.ack} by gazex hl7 listen"
        )

    listener = MLLPListener(args.host, args.port, show)
    print(
        f"listening for MLLP on {listener.host}:{listener.port}, answering {args.ack}",
        file=sys.stderr,
        flush=True,
    )
    try:
        listener.serve_forever()
    finally:
        listener.stop()
    return 0


def send_command(args: argparse.Namespace) -> int:
    from workers.hl7 import mllp

    if args.message is not None:
        message: bytes | str = args.message.read_bytes()
    else:
        if args.source is None:
            raise ValueError("--result needs --source (the analysed image)")
        import pydicom

        from model.result import InferenceResult
        from workers.hl7 import messages as hl7

        result = InferenceResult.from_json(args.result.read_text(encoding="utf-8"))
        oru = hl7.build_oru_r01(
            result,
            pydicom.dcmread(args.source, stop_before_pixels=True),
            sending_application=args.sending_application,
            sending_facility=args.sending_facility,
            receiving_application=args.receiving_application,
            receiving_facility=args.receiving_facility,
            revision=args.revision,
        )
        message = hl7.encode(oru)
    ack = mllp.send(
        message,
        args.host,
        args.port,
        connect_timeout=args.connect_timeout,
        read_timeout=args.read_timeout,
        retries=args.retries,
    )
    print(f"{ack.code} {ack.control_id}")
    return 0
