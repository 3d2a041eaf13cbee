"""A report of deprecated or blocking use by llm_router fails the run."""

from __future__ import annotations

from homeassistant.core import HomeAssistant
from homeassistant.helpers import frame
import pytest

from tests.reports import IntegrationReports, reports_in

# What Home Assistant 2026.11 logged before the port (issue "Run on the Home
# Assistant that users run today").
REAL_HASS_LOG = """\
2026-11-20 10:00:01.000 INFO (MainThread) [homeassistant.setup] Setting up llm_router
2026-11-20 10:00:02.000 WARNING (MainThread) [homeassistant.util.loop] Detected blocking call to import_module with args ('pydantic_core',) inside the event loop by custom integration 'llm_router' at custom_components/llm_router/engine/ollama.py, line 240: except (json.JSONDecodeError, pydantic.ValidationError):
2026-11-20 10:00:03.000 WARNING (MainThread) [homeassistant.helpers.frame] Detected that custom integration 'llm_router' calls async_get_chat_session without a context at custom_components/llm_router/services.py, line 138: chat_session.async_get_chat_session(. This will stop working in Home Assistant 2027.5, please report it to the author of the 'llm_router' custom integration
2026-11-20 10:00:04.000 WARNING (MainThread) [homeassistant.helpers.frame] Detected that custom integration 'other' calls something old
"""


def test_reports_naming_us_are_found_in_a_hass_log() -> None:
    found = reports_in(REAL_HASS_LOG.splitlines())
    assert len(found) == 2
    assert "blocking call to import_module" in found[0]
    assert "async_get_chat_session without a context" in found[1]


@pytest.mark.parametrize(
    "integration_frame_path", ["custom_components/llm_router/services.py"]
)
@pytest.mark.usefixtures("mock_integration_frame")
async def test_a_deprecation_report_fails_the_test(
    hass: HomeAssistant, integration_reports: IntegrationReports
) -> None:
    frame.report_usage("calls something deprecated")
    assert integration_reports.reports
    assert (
        "custom integration 'llm_router' calls something deprecated"
        in (integration_reports.reports[0])
    )
    with pytest.raises(pytest.fail.Exception, match="reported llm_router"):
        integration_reports.fail_if_any()
    integration_reports.reports.clear()  # proven; let this test pass
