"""Log set-up for ``dualstream serve``: readable text, or one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from opentelemetry import trace


class JsonFormatter(logging.Formatter):
    """One JSON object per line; inside a traced call (a publish, say) it carries the
    call's ``trace_id`` and ``span_id``, as the W3C and OpenTelemetry write them (hex), so a
    log line leads to its trace and back."""

    def format(self, record: logging.LogRecord) -> str:
        body = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Formatted on the thread that logged, so the current span is the caller's.
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            body["trace_id"] = f"{span_context.trace_id:032x}"
            body["span_id"] = f"{span_context.span_id:016x}"
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


def configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every reconnect attempt at ERROR; our own messages say it once, clearly.
    logging.getLogger("aiokafka").setLevel(max(logging.getLogger().level, logging.CRITICAL))
