"""The Python client's conformance app (the contract is in clients/README.md), built on the
client's public API only: ``python -m tests.clients.python_app publish|subscribe|overload``."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import Counter
from collections.abc import Iterator, Sequence

from dualstream_client import (
    CaughtUp,
    DualstreamClient,
    DualstreamClientError,
    EventInput,
    Gap,
    Notification,
    ResourceExhaustedError,
    Retry,
    StreamMessage,
    Throttle,
    parse_source,
)

# The contract asks for at least a minute of retries per event: the tests restart the sidecar
# under a running publisher.
PUBLISH_RETRY = Retry(max_attempts=1 << 20, initial_backoff=0.1, max_backoff=1.0, max_elapsed=90)


def _source(text: str) -> tuple[str, str]:
    try:
        return parse_source(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.clients.python_app")
    commands = parser.add_subparsers(dest="command", required=True)
    publish = commands.add_parser("publish")
    publish.add_argument("--source", type=_source, required=True)
    publish.add_argument("--type", required=True)
    publish.add_argument("--count", type=int, default=1)
    publish.add_argument("--id-prefix", default="")
    subscribe = commands.add_parser("subscribe")
    subscribe.add_argument("--source", type=_source, action="append", required=True)
    subscribe.add_argument("--resume", default="")
    subscribe.add_argument("--limit", type=int, default=0)
    subscribe.add_argument("--policy", choices=["gap", "replay", "close"], default="gap")
    overload = commands.add_parser("overload")
    overload.add_argument("--source", type=_source, required=True)
    overload.add_argument("--count", type=int, required=True)
    overload.add_argument("--concurrency", type=int, required=True)
    for command in (publish, subscribe, overload):
        command.add_argument("--target", required=True)
        command.add_argument("--token", default="")
    return parser


def _emit(line: dict[str, object]) -> None:
    print(json.dumps(line), flush=True)


async def _publish(args: argparse.Namespace) -> None:
    source_type, source_id = args.source
    async with DualstreamClient(args.target, token=args.token, retry=PUBLISH_RETRY) as client:
        for number in range(args.count):
            event_id = f"{args.id_prefix}-{number}" if args.id_prefix else ""
            event = EventInput(args.type, source_type, source_id, id=event_id)
            result = await client.publish(event)
            _emit(
                {
                    "id": result.id,
                    "source_type": source_type,
                    "source_id": source_id,
                    "partition": result.partition,
                    "offset": result.offset,
                }
            )


def _describe(message: StreamMessage) -> dict[str, object]:
    if isinstance(message, Notification):
        return {
            "kind": "notification",
            "id": message.id,
            "source_type": message.source_type,
            "source_id": message.source_id,
            "partition": message.partition,
            "offset": message.offset,
            "cursor": message.cursor,
            "replayed": message.replayed,
            "traceparent": message.traceparent,
        }
    if isinstance(message, Gap):
        reason = message.reason.upper()
        return {"kind": "gap", "reason": reason, "missed": message.missed, "cursor": message.cursor}
    assert isinstance(message, CaughtUp)
    return {"kind": "caught_up", "replayed": message.replayed, "cursor": message.cursor}


async def _subscribe(args: argparse.Namespace) -> None:
    async with (
        DualstreamClient(args.target, token=args.token) as client,
        client.subscribe(
            args.source, resume_cursor=args.resume, policy=args.policy, auto_resume=True
        ) as stream,
    ):
        _emit({"kind": "subscribed", "cursor": stream.cursor})
        seen = 0
        async for message in stream:
            _emit(_describe(message))
            if isinstance(message, Notification):
                seen += 1
                if args.limit and seen >= args.limit:
                    return


def _outcome(error: DualstreamClientError) -> str:
    """The contract's name for a failed publish of ``overload``."""
    if isinstance(error, ResourceExhaustedError) and error.retry_after is not None:
        return "throttled" if error.throttled else "refused"
    return error.code.name


async def _overload(args: argparse.Namespace) -> None:
    """Publish with ``--concurrency`` calls in flight, no retry and the default throttle, and
    count how each call ended."""
    source_type, source_id = args.source
    outcomes: Counter[str] = Counter()

    async def publish_from(numbers: Iterator[int], client: DualstreamClient) -> None:
        # The workers share one iterator: each takes the next number once its call is done.
        for _ in numbers:
            try:
                await client.publish(EventInput("overload", source_type, source_id))
            except DualstreamClientError as exc:
                outcomes[_outcome(exc)] += 1
            else:
                outcomes["ok"] += 1

    async with DualstreamClient(args.target, token=args.token, throttle=Throttle()) as client:
        numbers = iter(range(args.count))
        async with asyncio.TaskGroup() as workers:
            for _ in range(args.concurrency):
                workers.create_task(publish_from(numbers, client))
    counts = {kind: outcomes.pop(kind, 0) for kind in ("ok", "refused", "throttled")}
    _emit({"kind": "overload", **counts, "errors": dict(outcomes)})


COMMANDS = {"publish": _publish, "subscribe": _subscribe, "overload": _overload}


async def _run(args: argparse.Namespace) -> None:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM ends a subscriber normally: the contract's way to stop one without --limit.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await COMMANDS[args.command](args)
    except asyncio.CancelledError:
        if task.cancelling() and args.command == "subscribe":
            return
        raise


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        asyncio.run(_run(args))
    except DualstreamClientError as exc:
        sys.exit(f"python_app: {exc}")


if __name__ == "__main__":
    main()
