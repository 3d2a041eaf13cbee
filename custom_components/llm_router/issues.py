"""Repair issues about a router's backends: their ids, and clearing them."""

from __future__ import annotations

from collections.abc import Callable

from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import issue_registry as ir

from .const import DOMAIN


def unreachable_issue_id(subentry_id: str) -> str:
    """Repair issue: the backend has been unreachable for long."""
    return f"unreachable_{subentry_id}"


def model_missing_issue_id(subentry_id: str) -> str:
    """Repair issue: the server lacks the configured model."""
    return f"model_missing_{subentry_id}"


def invalid_url_issue_id(subentry_id: str) -> str:
    """Repair issue: the backend's stored URL cannot be used."""
    return f"invalid_url_{subentry_id}"


def did_not_wake_issue_id(subentry_id: str) -> str:
    """Repair issue: the backend's wake action ran, repeatedly, to no avail."""
    return f"did_not_wake_{subentry_id}"


BACKEND_ISSUES: tuple[Callable[[str], str], ...] = (
    unreachable_issue_id,
    model_missing_issue_id,
    invalid_url_issue_id,
    did_not_wake_issue_id,
)


@callback
def async_delete_backend_issues(hass: HomeAssistant, subentry_id: str) -> None:
    """Drop every repair issue of one backend."""
    for issue_id in BACKEND_ISSUES:
        ir.async_delete_issue(hass, DOMAIN, issue_id(subentry_id))


@callback
def async_known_backends(hass: HomeAssistant) -> set[str]:
    """The subentry IDs of every router's backends."""
    return {
        subentry_id
        for entry in hass.config_entries.async_entries(DOMAIN)
        for subentry_id in entry.subentries
    }


@callback
def async_delete_orphan_issues(hass: HomeAssistant, backends: set[str]) -> None:
    """Drop repair issues of backends that are not among backends any more."""
    known = {
        issue_id(subentry_id) for subentry_id in backends for issue_id in BACKEND_ISSUES
    }
    for domain, issue_id in list(ir.async_get(hass).issues):
        if domain == DOMAIN and issue_id not in known:
            ir.async_delete_issue(hass, DOMAIN, issue_id)
