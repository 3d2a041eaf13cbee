"""Home Assistant's reports of deprecated or blocking use by this integration.

Home Assistant logs "Detected that custom integration 'llm_router' ..." for a
deprecated call (helpers/frame.py) and "Detected blocking call to ... by
custom integration 'llm_router' ..." for I/O in the event loop
(util/loop.py). Either is a bug of ours: tests and real Home Assistant runs
fail on them.
"""

from __future__ import annotations

from collections.abc import Iterable
import logging
import re

import pytest

REPORT = re.compile(r"Detected .*\bintegration 'llm_router'")


def reports_in(lines: Iterable[str]) -> list[str]:
    """The lines that report deprecated or blocking use by llm_router."""
    return [line.rstrip("\n") for line in lines if REPORT.search(line)]


class IntegrationReports(logging.Handler):
    """Collects the reports logged while installed on the root logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.reports: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep a record that reports us."""
        self.reports += reports_in([record.getMessage()])

    def fail_if_any(self) -> None:
        """Fail the test when Home Assistant reported us."""
        if self.reports:
            pytest.fail(
                "Home Assistant reported llm_router:\n" + "\n".join(self.reports)
            )
