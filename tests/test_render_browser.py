"""Render tests in headless Chromium, offline: every non-file:/data:/blob: request is aborted and
recorded. They skip (saying why) only where Chromium or playwright-python is missing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from browser_fixtures import browser, offline  # noqa: F401  (fixtures)
from render_helpers import PAYLOAD

from tlprobes.render import (
    Page,
    Report,
    attention_layers_view,
    attention_overview,
    attention_view,
    head_summaries,
    logit_lens_table,
    plot_layer_profiles,
    token_view,
)

pytestmark = pytest.mark.browser
# screenshots to look at; TLPROBES_SHOTS overrides the folder
SHOTS = Path(os.environ.get("TLPROBES_SHOTS", Path(tempfile.gettempdir()) / "tlprobes_shots"))
NOSPACE = "<img/src=x/onerror=alert(2)>"  # survives circuitsvis's space -> &nbsp; replacement
TOKENS = ["<bos>", "When", PAYLOAD, NOSPACE, " John", "<pad>"]
MASK = np.array([1, 1, 1, 1, 1, 0], dtype=bool)


def pattern(n_layer: int, n_head: int, n_pos: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    s = rng.normal(0, 2, (n_layer, n_head, n_pos, n_pos))
    s = np.where(np.tril(np.ones((n_pos, n_pos), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def open_page(offline, tmp_path: Path, html_obj, name: str = "p.html"):  # noqa: F811
    path = html_obj.save(tmp_path / name)
    offline.page.set_default_timeout(180_000)  # shared 2-core CI box; this is a hang guard only
    offline.goto(path)
    return offline.page


def test_report_paints_offline_and_payload_stays_inert(offline, tmp_path) -> None:  # noqa: F811
    pat = pattern(4, 3, len(TOKENS))
    m = np.linspace(60, 10, 5)
    rep = Report("browser " + PAYLOAD, {"model": "toy", "prompt": PAYLOAD})
    rep.add_heading("Plots").add_figure(
        plot_layer_profiles({"target": (m, m - 3, m + 3)}, significant=m < 30, title=PAYLOAD)
    )
    rep.add_heading("Tokens").add_text(PAYLOAD)
    rep.add_view(token_view(TOKENS, np.arange(6.0), label=PAYLOAD, mask=MASK))
    top = [[PAYLOAD if (i, j) == (1, 2) else f"t{i}{j}" for j in range(6)] for i in range(4)]
    rep.add_view(logit_lens_table(top, np.full((4, 6), 0.5), col_labels=TOKENS, mask=MASK))
    rep.add_heading("Attention")
    rep.add_view(attention_view(pat, TOKENS, layer=1, mask=MASK))
    rep.add_view(attention_overview(head_summaries(pat, MASK)))
    page = open_page(offline, tmp_path, rep)
    page.wait_for_function("document.querySelectorAll('.tlp-cv canvas').length >= 4")
    page.get_by_text("L1H0 Zoomed").wait_for()
    painted = offline.painted(".tlp-cv")
    assert len(painted) == 4 and min(painted) > 100, painted  # 3 thumbnails + zoomed head
    grid = offline.painted(".tlp-overview")
    assert len(grid) == 2 and min(grid) > 100, grid  # grid + colour bar
    tokens_text = page.locator(".tlp-cv").first.inner_text().replace("\xa0", " ")
    for tok in TOKENS[:5]:
        assert tok in tokens_text  # every token shown as text, <bos> and the payloads included
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"], img[onerror]').length") == 0
    body = page.evaluate("document.body.innerText")
    assert PAYLOAD in body  # shown as text: heading, paragraph, manifest, table cell
    assert page.title() == "browser " + PAYLOAD
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "browser_report.png"), full_page=True)
    offline.assert_clean()


def test_head_selector_switches_zoomed_head(offline, tmp_path) -> None:  # noqa: F811
    page = open_page(
        offline, tmp_path, attention_view(pattern(1, 4, 6), TOKENS, layer=0, mask=MASK)
    )
    page.get_by_text("L0H0 Zoomed").wait_for()
    page.get_by_text("L0H2", exact=True).first.hover()
    page.get_by_text("L0H2 Zoomed").wait_for()
    page.get_by_text("L0H3", exact=True).first.click()
    page.get_by_text("L0H3 Zoomed").wait_for()
    page.mouse.move(5, 5)
    assert page.get_by_text("L0H3 Zoomed").count() == 1  # click locked it
    assert min(offline.painted(".tlp-cv")) > 100
    offline.assert_clean()


def test_layer_selector_switches_layers(offline, tmp_path) -> None:  # noqa: F811
    view = attention_layers_view(pattern(6, 3, 6), TOKENS, mask=MASK, heads=[0, 2])
    page = open_page(offline, tmp_path, view)
    page.get_by_text("L0H0 Zoomed").wait_for()
    page.select_option("select.tlp-layer-select", "3")
    page.get_by_text("L3H0 Zoomed").wait_for()
    assert page.get_attribute(".tlp-layers", "data-layer") == "3"
    assert page.get_by_text("L3H2", exact=True).count() >= 1
    page.click("button[data-step='1']")
    page.get_by_text("L4H0 Zoomed").wait_for()
    assert page.locator(".tlp-layer-host > div").count() == 1  # fresh div, old one removed
    painted = offline.painted(".tlp-layers")
    assert len(painted) == 3 and min(painted) > 100, painted
    offline.assert_clean()


def test_overview_metric_menu_and_hover(offline, tmp_path) -> None:  # noqa: F811
    pat = pattern(12, 8, 6)
    view = attention_overview(head_summaries(pat), layer_labels=[f"b{i}" for i in range(12)])
    page = open_page(offline, tmp_path, view)
    page.wait_for_function("document.querySelector('.tlp-overview').dataset.metric === 'entropy'")
    before = page.evaluate("document.querySelector('canvas.tlp-grid').toDataURL()")
    page.select_option("select.tlp-metric", "prev_token")
    assert page.get_attribute(".tlp-overview", "data-metric") == "prev_token"
    assert page.evaluate("document.querySelector('canvas.tlp-grid').toDataURL()") != before
    box = page.locator("canvas.tlp-grid").bounding_box()
    data = page.evaluate(
        "(() => { const c = document.querySelector('canvas.tlp-grid');"
        " return [c.width, c.height]; })()"
    )
    assert data[0] > 8 * 10 and data[1] > 12 * 10
    page.mouse.move(box["x"] + box["width"] - 3, box["y"] + box["height"] - 3)
    tip = page.inner_text(".tlp-tip")
    assert tip.startswith("layer b11, head 7:") and "entropy (nats)" in tip and "sink mass" in tip
    assert min(offline.painted(".tlp-overview")) > 100
    offline.assert_clean()


def test_notebook_fragment_shown_twice_draws_both(offline, tmp_path) -> None:  # noqa: F811
    frag = attention_view(pattern(1, 2, 6), TOKENS, layer=0)._repr_html_()
    page_file = tmp_path / "nb.html"
    page_file.write_text(
        f"<!DOCTYPE html><meta charset=utf-8><body>{frag}{frag}</body>", encoding="utf-8"
    )
    offline.page.set_default_timeout(180_000)
    offline.goto(page_file)
    offline.page.wait_for_function("document.querySelectorAll('.tlp-cv canvas').length >= 6")
    assert offline.page.get_by_text("L0H0 Zoomed").count() == 2
    offline.assert_clean()


def test_page_builder_many_views_one_bundle_renders(offline, tmp_path) -> None:  # noqa: F811
    page_obj = Page("many")
    for i in range(3):
        page_obj.add_view("ColoredTokens", tokens=TOKENS, values=np.arange(6.0) * i)
    page = open_page(offline, tmp_path, page_obj)
    page.wait_for_function("document.querySelectorAll('.tlp-cv span').length > 0")
    assert page.locator(".tlp-cv").count() == 3
    assert all(page.locator(".tlp-cv").nth(i).inner_text().strip() for i in range(3))
    offline.assert_clean()


def test_fixture_records_and_blocks_network_requests(offline, tmp_path) -> None:  # noqa: F811
    """Guard for the guard: a page that fetches must show up in ``blocked`` (and fail to load)."""
    page_file = tmp_path / "net.html"
    page_file.write_text(
        '<!DOCTYPE html><body><img id="i" src="https://example.invalid/x.png"></body>',
        encoding="utf-8",
    )
    offline.goto(page_file)
    assert any("example.invalid/x.png" in url for url in offline.blocked)
    assert offline.page.evaluate("document.getElementById('i').naturalWidth") == 0
