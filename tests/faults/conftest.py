"""Every fault test also checks that the sidecar logged no traceback while it was broken.

A traceback in the log is a bug even when the test's own property held: an unexpected
exception, a callback that raised inside the event loop, a task whose failure nobody read.
In-process sidecars log into this process (``caplog`` sees their records); sidecar processes
write ``sidecar.log`` files under the test's ``tmp_path``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.verify import assert_no_traceback_in_records, assert_no_traceback_in_text


@pytest.fixture(autouse=True)
def sidecar_log_has_no_traceback(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> Iterator[None]:
    caplog.set_level(logging.WARNING)
    yield
    assert_no_traceback_in_records(caplog.get_records("call") + caplog.get_records("teardown"))
    for log in sorted(tmp_path.rglob("sidecar*.log")):
        assert_no_traceback_in_text(log.read_text(errors="replace"), str(log))
