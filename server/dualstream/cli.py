"""The ``dualstream`` command: ``serve`` runs the sidecar; ``publish`` and ``subscribe`` are
for people trying it out or debugging a running sidecar; ``health`` checks one (the image's
HEALTHCHECK)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from dualstream_client import (
    CaughtUp,
    DualstreamClient,
    DualstreamClientError,
    EventInput,
    Gap,
    Notification,
    StreamMessage,
    parse_source,
)


def _version() -> str:
    try:
        return version("dualstream")
    except PackageNotFoundError:
        return "0+unknown"


def _source(text: str) -> tuple[str, str]:
    try:
        return parse_source(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _attribute(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: write an attribute as NAME=VALUE")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    from dualstream.settings import Settings

    parser = argparse.ArgumentParser(prog="dualstream", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dualstream {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the sidecar")
    Settings.add_arguments(serve)

    publish = commands.add_parser("publish", help="publish events and print where they went")
    publish.add_argument("source", type=_source, help="TYPE:ID of the event's source")
    publish.add_argument("--type", required=True, help="event type, e.g. order.created")
    publish.add_argument("--data", default="", help="payload text (UTF-8)")
    publish.add_argument("--content-type", default="", help="media type of the payload")
    publish.add_argument("--attr", type=_attribute, action="append", default=[], metavar="K=V")
    publish.add_argument("--count", type=int, default=1, help="publish this many events")
    publish.add_argument("--interval", type=float, default=0.0, help="seconds between events")

    subscribe = commands.add_parser("subscribe", help="print notifications as they arrive")
    subscribe.add_argument("sources", type=_source, nargs="+", metavar="TYPE:ID")
    subscribe.add_argument("--limit", type=int, default=0, help="exit after this many")
    subscribe.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        help="only events of this type (repeatable)",
    )
    subscribe.add_argument(
        "--resume",
        default="",
        metavar="CURSOR",
        help="replay what was missed after CURSOR, then go live",
    )
    subscribe.add_argument(
        "--from-earliest", action="store_true", help="replay everything Kafka holds, then go live"
    )
    subscribe.add_argument(
        "--policy",
        choices=["gap", "close", "replay"],
        default="gap",
        help="when the stream cannot keep up: report a gap, end, or replay",
    )
    subscribe.add_argument("--data", action="store_true", help="print each event's payload")

    for sub in (publish, subscribe):
        sub.add_argument("--target", default="127.0.0.1:50051", help="the sidecar's address")

    health = commands.add_parser(
        "health",
        help="check a running sidecar: one line, exit status 0 when healthy, 1 when not",
        description="Checks gRPC health on the API target (and on the delivery process's, "
        "with subscribe_listen) and /readyz on the admin listener. "
        "By default the addresses are those that `dualstream serve` would use with the same "
        "DUALSTREAM_* environment (a 0.0.0.0 listener is reached on loopback; with TLS on the "
        "API only the admin check runs). An empty address skips that check.",
    )
    health.add_argument("--target", default=None, help="API address, host:port or unix:/path")
    health.add_argument("--admin", default=None, help="admin listener address, host:port")
    health.add_argument(
        "--streams-target",
        default=None,
        help="the delivery process's address (subscribe_listen), if there is one",
    )
    health.add_argument("--timeout", type=float, default=5.0, help="seconds per check")
    return parser


async def _publish(args: argparse.Namespace) -> None:
    source_type, source_id = args.source
    async with DualstreamClient(args.target) as client:
        for number in range(args.count):
            result = await client.publish(
                EventInput(
                    type=args.type,
                    source_type=source_type,
                    source_id=source_id,
                    data=args.data.encode(),
                    content_type=args.content_type,
                    attributes=dict(args.attr),
                )
            )
            notified = "notified" if result.notified else "NOT notified (Redis down?)"
            print(
                f"published {result.id} -> {result.topic}/{result.partition}@{result.offset}, "
                f"{notified}",
                flush=True,
            )
            if args.interval and number + 1 < args.count:
                await asyncio.sleep(args.interval)


async def _subscribe(args: argparse.Namespace) -> None:
    async with (
        DualstreamClient(args.target) as client,
        client.subscribe(
            args.sources,
            types=args.types,
            resume_cursor=args.resume,
            start_earliest=args.from_earliest,
            policy=args.policy,
            include_data=args.data,
        ) as stream,
    ):
        print(f"subscribed to {', '.join(stream.channels)} (cursor {stream.cursor})", flush=True)
        seen = 0
        async for message in stream:
            print(_describe(message), flush=True)
            if isinstance(message, Notification):
                seen += 1
                if args.limit and seen >= args.limit:
                    return


def _describe(message: StreamMessage) -> str:
    if isinstance(message, Gap):
        missed = f"{message.missed} notifications" if message.missed else "notifications"
        return f"GAP ({message.reason}): {missed} missed; resume with --resume {message.cursor}"
    if isinstance(message, CaughtUp):
        return f"caught up after replaying {message.replayed} events; now live"
    line = (
        f"{message.source_type}:{message.source_id} {message.type} id={message.id} "
        f"at {message.topic}/{message.partition}@{message.offset}"
    )
    if message.replayed:
        line += " (replayed)"
    if message.event is not None:
        line += f" data={message.event.data.decode(errors='replace')}"
    return line


def _serve(args: argparse.Namespace) -> None:
    from dualstream.connections import check_connection_settings
    from dualstream.errors import ListenError
    from dualstream.settings import Settings, TelemetrySettings
    from dualstream.workers import serve

    try:
        settings = Settings.load(os.environ, args)
        check_connection_settings(settings)
        telemetry = TelemetrySettings.load(os.environ)
    except ValueError as exc:
        sys.exit(f"dualstream: bad setting: {exc}")
    try:
        status = serve(settings, telemetry, _version())
    except ListenError as exc:
        sys.exit(f"dualstream: cannot start: {exc}")
    sys.exit(status)


def _health(args: argparse.Namespace) -> None:
    from dualstream.health_check import (
        Verdict,
        check_readyz,
        default_streams_target,
        default_targets,
        summary,
    )
    from dualstream.settings import Settings

    try:
        settings = Settings.load(os.environ)
    except ValueError as exc:
        sys.exit(f"dualstream health: bad setting: {exc}")
    default_api, default_admin = default_targets(settings)
    api = default_api if args.target is None else args.target
    admin = default_admin if args.admin is None else args.admin
    streams = args.streams_target
    if streams is None:
        streams = default_streams_target(settings)
    if not api and not admin and not streams:
        sys.exit("dualstream health: nothing to check: give --target or --admin")

    async def check() -> list[Verdict]:
        verdicts = []
        grpc_targets = [target for target in (api, streams) if target]
        if grpc_targets:
            from dualstream.transport.health_check import check_grpc_health

            for target in grpc_targets:
                verdicts.append(await check_grpc_health(target, args.timeout))
        if admin:
            verdicts.append(await check_readyz(admin, args.timeout))
        return verdicts

    verdicts = asyncio.run(check())
    print(summary(verdicts), flush=True)
    sys.exit(0 if all(v.healthy for v in verdicts) else 1)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        _serve(args)
        return
    if args.command == "health":
        _health(args)
        return
    runner = _publish if args.command == "publish" else _subscribe
    try:
        asyncio.run(runner(args))
    except DualstreamClientError as exc:
        sys.exit(f"dualstream {args.command}: {exc.code.name}: {exc.details}")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
