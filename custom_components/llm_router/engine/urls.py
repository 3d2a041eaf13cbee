"""Server URLs: checked and written one way, wherever they come from."""

from __future__ import annotations

import re

from yarl import URL

from .models import BackendKind

OLLAMA_PORT = 11434


class InvalidURL(ValueError):
    """A URL no backend can be reached at."""


def normalize_url(url: str, kind: BackendKind) -> str:
    """The URL in its one written form, or InvalidURL.

    http or https with a host and a port in range; no query or fragment.
    Without a scheme, an Ollama URL means http on Ollama's port (as the
    ollama client and OLLAMA_HOST read it); other servers need the scheme.
    Scheme and host are lowercased and a trailing slash is dropped.
    """
    text = url.strip()
    ollama_host = "://" not in text and kind is BackendKind.OLLAMA
    try:
        parsed = URL(f"http://{text}" if ollama_host else text)
        if ollama_host and not parsed.explicit_port:
            parsed = parsed.with_port(OLLAMA_PORT)
    except ValueError as err:  # port out of range, unclosed IPv6 bracket, ...
        raise InvalidURL(f"invalid URL: {err}") from err
    if parsed.scheme not in ("http", "https"):
        raise InvalidURL("the URL must start with http:// or https://")
    if not parsed.host or any(char.isspace() for char in parsed.host):
        raise InvalidURL("the URL names no host")
    if parsed.explicit_port == 0:
        raise InvalidURL("port 0 is not a server's port")
    if parsed.query_string or parsed.fragment:
        raise InvalidURL("the URL has a query or fragment")
    return str(parsed).rstrip("/")


_CREDENTIALS = re.compile(r"(?<=//)[^/@]*@")


def without_credentials(url: str) -> str:
    """The URL without a user name and password, to show, log or report.

    Works on text, so also on a URL that does not parse.
    """
    return _CREDENTIALS.sub("", url, count=1)
