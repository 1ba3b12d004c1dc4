"""Headless-Chromium fixtures for the render tests: offline pages that record every request.

Import the fixtures into a test module (``from browser_fixtures import browser, offline``).
They use Debian's ``/usr/bin/chromium`` (or ``$CHROMIUM_PATH``) through playwright-python, never
``playwright install``; without either, the browser tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")

# Count non-white pixels over every canvas under `root` (a CSS selector).
PAINTED_JS = """(root) => Array.from(document.querySelectorAll(root + ' canvas')).map(c => {
  if (!c.width || !c.height) return 0;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 0 && (d[i] < 245 || d[i + 1] < 245 || d[i + 2] < 245)) n++;
  }
  return n;
})"""


def find_chromium() -> str | None:
    for cand in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", shutil.which("chromium")):
        if cand and os.path.exists(cand):
            return cand
    return None


_SHARED: dict[str, Any] = {}


@pytest.fixture(scope="session")
def browser() -> Any:
    path = find_chromium()
    if path is None:
        pytest.skip(
            "no Chromium: install Debian's (apt-get install -y chromium) or set CHROMIUM_PATH"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright-python is not installed (pip install playwright)"
    )
    # One Playwright for the whole session, however many test modules import this fixture (two
    # sync_playwright() at once fail with "Sync API inside the asyncio loop").
    if not _SHARED:
        pw = sync_api.sync_playwright().start()
        _SHARED.update(pw=pw, browser=pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS),
                       users=0)
    _SHARED["users"] += 1
    yield _SHARED["browser"]
    _SHARED["users"] -= 1
    if _SHARED["users"] == 0:
        _SHARED["browser"].close()
        _SHARED["pw"].stop()
        _SHARED.clear()


@dataclass
class OfflinePage:
    """A page whose non-local requests are aborted and recorded, with errors and dialogs recorded."""

    page: Any
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def goto(self, path: Path) -> None:
        self.page.goto(Path(path).resolve().as_uri(), wait_until="load")

    def painted(self, root: str = "") -> list[int]:
        """Non-white pixel count per canvas under ``root`` (a CSS selector; '' for all)."""
        return self.page.evaluate(PAINTED_JS, root)

    def assert_clean(self) -> None:
        assert self.blocked == [], f"requests left the page: {self.blocked}"
        assert self.errors == [], f"page errors: {self.errors}"
        assert self.dialogs == [], f"dialogs fired: {self.dialogs}"
        assert self.console_errors == [], f"console errors: {self.console_errors}"


@pytest.fixture
def offline(browser: Any) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    page = context.new_page()
    rec = OfflinePage(page)

    def route(r: Any) -> None:
        url = r.request.url
        if url.startswith(LOCAL_SCHEMES):
            r.continue_()
        else:
            rec.blocked.append(url)
            r.abort()

    context.route("**/*", route)
    page.on(
        "request",
        lambda req: None if req.url.startswith(LOCAL_SCHEMES) else rec.blocked.append(req.url),
    )
    page.on("pageerror", lambda err: rec.errors.append(str(err)))
    page.on(
        "console", lambda msg: rec.console_errors.append(msg.text) if msg.type == "error" else None
    )

    def on_dialog(d: Any) -> None:
        rec.dialogs.append(f"{d.type}: {d.message}")
        d.dismiss()

    page.on("dialog", on_dialog)
    yield rec
    context.close()
