"""The Hugging Face Hub, offline: probe it once, and when it cannot be reached switch the process to offline mode, so
that a cached model or data set loads at once and one that is not cached fails at once (one sentence, exit 2) instead of
huggingface_hub retrying with backoff for ~50 s per file."""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse

PROBE_TIMEOUT = 3.0  # seconds for one TCP connection to the hub's endpoint

_reachable: bool | None = None


def reachable() -> bool | None:
    """Whether the probe found the hub reachable (None: not probed yet)."""
    return _reachable


def offline_unless_reachable() -> bool:
    """Call before loading a hub id. Probes once per process; offline mode where the hub cannot be reached."""
    global _reachable
    if _reachable is not None:
        return _reachable
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        _reachable = False
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"))
    if proxied or not url.hostname:  # through a proxy a direct connection proves nothing: let the hub client try
        _reachable = True
        return True
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        socket.create_connection((url.hostname, port), timeout=PROBE_TIMEOUT).close()
        _reachable = True
    except (OSError, ValueError):
        _reachable = False
        os.environ["HF_HUB_OFFLINE"] = "1"  # for what is imported later
        constants.HF_HUB_OFFLINE = True  # read by huggingface_hub and transformers at call time
        if "datasets" in sys.modules:  # datasets copies it at import
            sys.modules["datasets"].config.HF_HUB_OFFLINE = True
    return _reachable
