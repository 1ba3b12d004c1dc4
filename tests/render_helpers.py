"""Shared helpers for the render tests: pull the JSON props back out of a page."""

from __future__ import annotations

import json
import re

PAYLOAD = "</script><img src=x onerror=alert(1)>"

_MOUNT = re.compile(r'tlp\.mount\(document\.currentScript,"[^"]+","(\w+)",(.*?)\);</script>', re.S)
_WIDGET = re.compile(
    r'tlp\.(layers|overview)\(document\.currentScript,"[^"]+",(.*?)\);</script>', re.S
)


def mounted(html: str) -> list[tuple[str, dict]]:
    """(component, props) for every circuitsvis view in the page, in order."""
    return [(c, json.loads(p)) for c, p in _MOUNT.findall(html)]


def widgets(html: str) -> list[tuple[str, dict]]:
    return [(k, json.loads(p)) for k, p in _WIDGET.findall(html)]
