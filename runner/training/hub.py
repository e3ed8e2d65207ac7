"""Is the Hugging Face Hub reachable? Decide once, fast, and tell the libraries.

Without this, ``datasets`` and ``transformers`` retry an unreachable Hub for
about 20 seconds per call before failing.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from urllib.parse import urlparse

log = logging.getLogger(__name__)

_TRUTHY = {"1", "true", "yes", "on"}


@functools.cache
def hub_available(timeout: float = 2.0) -> bool:
    """True when the Hub answers a TCP connect within ``timeout`` and offline mode is off.

    When it does not, offline mode is switched on for ``huggingface_hub``,
    ``datasets`` and ``transformers`` so that later calls use the local cache only.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUTHY:
        _go_offline()
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError as err:
        log.info("Hugging Face Hub not reachable (%s): working offline", err)
        _go_offline()
        return False


def _go_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    # The libraries read these at import time; set the module constants as well.
    import datasets.config
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True
