"""Script injection, in headless Chromium, offline: every page type (``Page`` with every circuitsvis
component, ``Report`` with titles, headings, text, figures, tables, manifest and every view helper, a
suite's run report, and the CSP-less notebook fragments) rendered with script-injection payloads in
every string prop. Nothing may run (no dialog, no canary set, no injected element) and nothing may be
requested."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from browser_fixtures import browser, offline  # noqa: F401  (fixtures)

from tlprobes.render import (
    Page,
    Report,
    attention_layers_view,
    attention_overview,
    attention_view,
    head_summaries,
    logit_lens_table,
    plot_layer_profiles,
    plot_scatter,
    token_view,
)
from tlprobes.render._page import COMPONENTS

pytestmark = pytest.mark.browser

PAYLOADS = [
    '<img src=x onerror="window.__pwn=1;alert(1)">',
    "<img/src=x/onerror=window.__pwn=2>",
    "</script><script>window.__pwn=3;alert(3)</script>",
    "<svg/onload=window.__pwn=4>",
    '<img src="https://evil.invalid/a.png">',
    '"><iframe src="https://evil.invalid/f"></iframe>',
    "$$ \u2028 <b>&amp;</b> ${x} `${window.__pwn=5}`",
]
PAY = " ".join(PAYLOADS)
N = len(PAYLOADS)

INJECTED = (
    "document.querySelectorAll('img:not([src^=\"data:\"]), svg[onload], iframe, object, embed, "
    "[onerror], [onload], [onclick], b').length"
)


def _pattern(*lead: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    s = np.where(np.tril(np.ones((N, N), bool)), rng.normal(0, 1, (*lead, N, N)), -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def component_props() -> dict[str, dict]:
    """Every circuitsvis component with every string prop set to payloads."""
    rng = np.random.default_rng(1)
    toks = list(PAYLOADS)
    return {
        "ColoredTokens": dict(tokens=toks, values=np.arange(N, dtype=float)),
        "ColoredTokensMulti": dict(tokens=toks, values=rng.random((N, 2)), labels=[PAY, PAYLOADS[0]]),
        "TextNeuronActivations": dict(
            tokens=toks, activations=rng.random((N, 2, 3)).tolist(), firstDimensionName=PAY,
            secondDimensionName=PAY, firstDimensionLabels=[PAY, PAYLOADS[1]],
            secondDimensionLabels=PAYLOADS[:3]),
        "TokenLogProbs": dict(
            prompt=toks, topKLogProbs=-rng.random((N, 3)), topKTokens=[PAYLOADS[:3]] * N,
            correctTokenRank=[1] * N, correctTokenLogProb=[-0.5] * N),
        "TopkSamples": dict(
            tokens=[[[toks, toks]]], activations=[[[list(rng.random(N)), list(rng.random(N))]]],
            zerothDimensionName=PAY, firstDimensionName=PAY, zerothDimensionLabels=[PAY],
            firstDimensionLabels=[PAYLOADS[2]]),
        "TopkTokens": dict(
            tokens=[toks], topkVals=[rng.random((N, 2, 2)).tolist()],
            topkIdxs=[rng.integers(0, 2, (N, 2, 2)).tolist()],
            bottomkVals=[rng.random((N, 2, 2)).tolist()],
            bottomkIdxs=[rng.integers(0, 2, (N, 2, 2)).tolist()],
            firstDimensionName=PAY, thirdDimensionName=PAY, sampleLabels=[PAY],
            firstDimensionLabels=[PAYLOADS[3], PAYLOADS[4]]),
        "AttentionHeads": dict(attention=_pattern(2), tokens=toks, attentionHeadNames=[PAY, PAYLOADS[0]]),
        "AttentionPattern": dict(attention=_pattern(), tokens=toks),
        "AttentionPatterns": dict(tokens=toks, attention=_pattern(2), headLabels=[PAY, PAYLOADS[5]]),
    }


def every_component_page() -> Page:
    props = component_props()
    assert set(props) == set(COMPONENTS)  # a new component must be added here
    page = Page(PAY)
    for name, p in props.items():
        page.add_heading(f"{name} {PAY}").add_view(name, caption=PAY, **p)
    return page


def report() -> Report:
    pat = _pattern(3, 2)
    mask = np.ones(N, bool)
    m = np.linspace(60, 10, N)
    rep = Report(PAY, {PAY: PAY, "prompt": PAYLOADS, "nested": {PAY: [PAY]}})
    rep.add_heading(PAY).add_text(PAY)
    rep.add_figure(plot_layer_profiles({PAY: (m, m - 3, m + 3)}, layers=PAYLOADS, title=PAY),
                   caption=PAY)
    rep.add_figure(plot_scatter(np.random.default_rng(0).random((N, 2)), groups=PAYLOADS,
                                labels=PAYLOADS, title=PAY), caption=PAY, fmt="svg")
    rep.add_table({PAY: PAYLOADS, "x": list(range(N))}, caption=PAY)
    rep.add_heading(PAYLOADS[1])
    rep.add_view(token_view(PAYLOADS, np.arange(N, dtype=float), label=PAY), caption=PAY)
    rep.add_view(token_view(PAYLOADS, {PAY: np.arange(N, dtype=float), "b": np.ones(N)}))
    rep.add_view(logit_lens_table([PAYLOADS] * 3, np.full((3, N), 0.5), row_labels=PAYLOADS[:3],
                                  col_labels=PAYLOADS, title=PAY))
    rep.add_view(attention_view(pat, PAYLOADS, layer=1, mask=mask, title=PAY,
                                layer_labels=PAYLOADS[:3]))
    rep.add_view(attention_view(pat[0], PAYLOADS, style="pattern", title=PAY))
    rep.add_view(attention_layers_view(pat, PAYLOADS, layer_labels=PAYLOADS[:3], title=PAY))
    rep.add_view(attention_overview(head_summaries(pat), layer_labels=PAYLOADS[:3],
                                    head_labels=PAYLOADS[:2], title=PAY))
    rep.add_view(every_component_page(), caption=PAY)
    return rep


def _check(offline, path: Path) -> None:  # noqa: F811
    offline.page.set_default_timeout(180_000)  # a hang guard on a shared 2-core box, not a limit
    offline.goto(path)
    page = offline.page
    page.wait_for_timeout(300)  # let React mount and any handler fire
    for el in page.locator(".tlp-cv button, .tlp-cv span").all()[:40]:
        el.hover()  # tooltips and hover states render more strings
    assert page.evaluate("window.__pwn") is None, "an injected script ran"
    assert page.evaluate(INJECTED) == 0, page.evaluate("document.body.innerHTML")[:2000]
    assert offline.dialogs == [], offline.dialogs
    assert offline.blocked == [], offline.blocked
    assert "onerror" in page.evaluate("document.body.innerText")  # payloads shown as text


def _fragment_file(tmp_path: Path, html: str, name: str) -> Path:
    path = tmp_path / name
    path.write_text(f"<!DOCTYPE html><meta charset=utf-8><body>{html}</body>", encoding="utf-8")
    return path


@pytest.mark.parametrize("full", [True, False], ids=["page-with-csp", "fragment-without-csp"])
def test_every_component_prop_is_inert(offline, tmp_path, full) -> None:  # noqa: F811
    page = every_component_page()
    if full:
        path = page.save(tmp_path / "p.html")
    else:
        path = _fragment_file(tmp_path, page._repr_html_(), "nb.html")
    _check(offline, path)


@pytest.mark.parametrize("full", [True, False], ids=["report-with-csp", "fragment-without-csp"])
def test_report_with_every_part_is_inert(offline, tmp_path, full) -> None:  # noqa: F811
    rep = report()
    path = rep.save(tmp_path / "r.html") if full else _fragment_file(tmp_path, rep._repr_html_(), "nb.html")
    _check(offline, path)
    assert offline.page.title() == (PAY if full else "")


def test_csp_blocks_inline_handlers_and_fetches(offline, tmp_path) -> None:  # noqa: F811
    """The CSP alone stops markup that slipped through unescaped (the control proves the probe)."""
    raw = ('<img src=x onerror="window.__pwn=1"><img src="https://evil.invalid/b.png">'
           '<script>window.__pwn=2</script>')
    page = Page("csp").add_html(raw).add_view("ColoredTokens", tokens=["a"], values=np.ones(1))
    html = page.to_html()
    script_src = html.split("script-src ")[1].split(";")[0]
    assert "unsafe" not in script_src and script_src.startswith("'sha256-")
    offline.goto(page.save(tmp_path / "csp.html"))
    offline.page.wait_for_timeout(200)
    assert offline.page.evaluate("window.__pwn") is None  # neither the handler nor the script ran
    assert offline.page.locator(".tlp-cv span").count() > 0  # our own scripts did run
    csp = " ".join(offline.console_errors)
    assert "img-src" in csp and "script-src" in csp  # the browser refused both by the CSP
    # control: the same markup without the CSP runs and fetches, so the checks above can fail
    offline.goto(_fragment_file(tmp_path, raw, "nocsp.html"))
    offline.page.wait_for_timeout(200)
    assert offline.page.evaluate("window.__pwn") in (1, 2)
    assert any("evil.invalid" in u for u in offline.blocked)


def test_run_report_of_hostile_prompts_is_inert(offline, tmp_path, gpt2_bpe_dir) -> None:  # noqa: F811
    """A geometry suite on prompts full of payloads and ``$$`` (which used to crash matplotlib), on a
    model with GPT-2's real BPE, so ``$$`` and the payload pieces are tokens of their own."""
    import torch

    from tlprobes.suites import run_suite

    torch.set_num_threads(1)
    folder = tmp_path / "suite"
    folder.mkdir()
    lines = [f"The dog {p} saw her cat." for p in PAYLOADS] + ["$$ $\\frac $x$ $$ saw her."] * 3
    (folder / "p.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "s.toml").write_text(
        f'[suite]\nname = "hostile"\ntitle = {PAY!r}\nstudy = "geometry"\n'
        f'description = {PAYLOADS[0]!r}\n\n[prompts]\nfile = "p.txt"\n\n'
        "[analysis]\nmax_points = 60\nattention_prompts = 2\ntsne_perplexity = 3.0\n",
        encoding="utf-8",
    )
    report = run_suite(folder / "s.toml", out=tmp_path / "run", model=str(gpt2_bpe_dir), quiet=True)
    _check(offline, report)
