"""Every capture and result displays itself offline: one bundle, no network, prompts escaped."""

from __future__ import annotations

from conftest import PROMPTS

import tlprobes as tp

PAYLOAD = "</script><img src=x onerror=alert(1)>"


def test_results_render_offline_and_escaped(model, tmp_path):
    if tp._tl.adapter.adapter_for(model).meta.model_kind != "TransformerBridge" or tp._tl.adapter.adapter_for(model).meta.mode != "raw":
        return  # rendering does not depend on the model kind; one kind is enough
    res = tp.run(model, [PROMPTS[0], "Mary said " + PAYLOAD + " to her."],
                 tp.Residual(), tp.Attention(layers=[0, 2]), tp.LogitLens(top_k=3), tp.Steps())
    for name in res:
        html = res[name].to_html()
        assert "unpkg" not in html and "<script src" not in html
        assert PAYLOAD not in html, name  # the raw payload never appears unescaped
        assert "<img src=x" not in html
    from tlprobes.render._runtime import circuitsvis_bundle

    probe = circuitsvis_bundle()[1000:1200]  # a stretch of the inlined JS
    full = res.to_html()
    assert full.count(probe) == 1  # inlined once for the whole report
    text = res.save_html(tmp_path / "r.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.count(probe) == 1
    assert "Attention" in text and "Logit lens" in text
    assert res.attention._repr_html_().startswith("<")


# -- notebook display (issue 14) ---------------------------------------------------------------------
import dataclasses  # noqa: E402
import inspect  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from browser_fixtures import CHROMIUM_ARGS, find_chromium, offline  # noqa: E402,F401  (fixture)

import tlprobes.analysis as ta  # noqa: E402
import tlprobes.analysis.results as tr  # noqa: E402
from tlprobes.analysis._tables import FrameMixin  # noqa: E402
from tlprobes.render import _repr  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    """Module-scoped (browser_fixtures' is session-scoped per importing module, and two live
    sync_playwright instances in one process collide): closed before the next module starts."""
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium: install Debian's (apt-get install -y chromium) or set CHROMIUM_PATH")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright-python is not installed")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(1)
    model = tp.load_model()
    res = tp.run(model, ["Mary saw her brother at the market.", "John gave her a small red book.",
                         "The dog ran."], tp.Residual(), tp.Components(), tp.Steps(),
                 tp.Residual(mid=True, name="residual_mid"),
                 tp.Attention(), tp.LogitLens(top_k=3))
    return model, res


def _every_result(model, res):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 6)), rng.normal(size=(30, 5))
    resid = res.residual
    out = [
        tp.angle_trajectory(resid, " her", control="clean"),
        tp.analysis.within_layer_angles(resid, " her"),
        tp.path_length(resid), tp.analysis.decompose_steps(res.components), tp.analysis.decompose_steps(res.steps),
        tp.analysis.lens_readout(res.logit_lens), tp.analysis.weight_tying(rng.normal(size=(4, 9)), rng.normal(size=(9, 4))),
        tp.analysis.unembedding_spectrum(rng.normal(size=(6, 20))), tp.analysis.pca(x), tp.analysis.tsne(x, perplexity=5),
        tp.analysis.drift(resid), tp.analysis.anisotropy(resid), tp.analysis.rsa(x, y),
        tp.analysis.state_space_trajectories(resid, " her"),
        tp.analysis.map_embeddings(x, x @ np.linalg.qr(rng.normal(size=(6, 6)))[0], test_fraction=0.3),
        ta.layer_summary(rng.normal(size=(4, 10))), ta.paired_test(rng.normal(size=(4, 10)), rng.normal(size=(4, 10))),
        ta.independent_test(rng.normal(size=(4, 10)), rng.normal(size=(4, 12))),
        ta.correlation(rng.normal(size=20), rng.normal(size=20)),
    ]
    acc = tp.analysis.PathAccumulator()
    acc.update(resid)
    out.append(acc.compute())
    angles = tp.analysis.AngleAccumulator()
    angles.update(res.steps)
    out.append(angles.compute())
    a, b = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
    out += [tp.analysis.sign_flip_test(a, b), tp.analysis.bootstrap_ci(a, b, n_resamples=199),
            tp.analysis.rotation_decomposition(res.residual_mid, " her")]
    hs = tp.run(model, ["Mary saw her brother at the market.", "John gave her a small red book."],
                tp.HeadSteps(positions=tp.Target(" her"), baseline=tp.Target(" her", offset=-1)),
                progress=False).head_steps
    out += [tp.analysis.head_ranking(hs, "norm"), tp.analysis.head_contrast(hs, "angle")]
    out += [ta.nearest_neighbors(x, x, 2), ta.retrieval_precision(x, x),
            ta.shared_vocabulary({"a": 0, "b": 1}, {"b": 3, "a": 1})]
    return out


def test_every_analyzer_result_has_a_short_face(shipped):
    """Short repr, compact HTML card with human numbers, and .plot() that shows itself inline."""
    model, res = shipped
    results = _every_result(model, res)
    seen = {type(r) for r in results}
    classes = {c for mod in (ta, tr) for _, c in inspect.getmembers(mod, inspect.isclass)
               if issubclass(c, FrameMixin) and c is not FrameMixin}
    assert len(classes) >= 28  # the result types live in tlprobes.analysis.results
    assert classes <= seen, f"result classes not covered here: {classes - seen}"
    for r in results:
        name = type(r).__name__
        text = repr(r)
        assert text.startswith(name + "(") and len(text) <= 240 and "array(" not in text, text
        html = r._repr_html_()
        assert len(html) < 5000, (name, len(html))
        assert "e+0" not in html and "000000" not in html, (name, html)  # no 6.000000e+01
        assert html.count("<tr>") <= 14  # header + at most 12 rows (+ the "..." row)
        fig = r.plot()
        png = fig._repr_png_()
        assert png[:4] == b"\x89PNG" and len(png) > 5000, name


def test_card_pivots_means_first_and_formats_counts():
    s = ta.layer_summary(np.arange(120.0).reshape(4, 30))
    html = s._repr_html_()
    assert "<th>mean</th>" in html and ">30<" in html  # n = 30 written as 30, not 3.000000e+01
    assert html.index("<th>mean</th>") < html.index("<th>n</th>")
    big = ta.layer_summary(np.ones((40, 3)))  # 40 layers: 12 rows shown and a note
    assert "28 rows not shown" in big._repr_html_()


def test_plot_functions_return_inline_figures():
    from tlprobes.render import plot_scree

    fig = plot_scree(np.array([0.5, 0.3, 0.2]))
    png = fig._repr_png_()
    assert png[:4] == b"\x89PNG"
    # IPython picks it up with no %matplotlib: its png formatter reads _repr_png_
    formatters = pytest.importorskip("IPython.core.formatters", reason="IPython is on tl4 only")
    PNGFormatter = formatters.PNGFormatter

    assert PNGFormatter()(fig) == png


def _fake_kernel(monkeypatch, state):
    monkeypatch.setattr(_repr, "in_notebook", lambda: True)
    monkeypatch.setattr(_repr, "_cell_and_count", lambda: (state["cell"], state["count"]))
    _repr.notebook_bundle("once")


def test_bundle_sent_once_per_kernel_and_again_when_its_cell_reruns(shipped, monkeypatch):
    from tlprobes.render._runtime import circuitsvis_bundle

    _, res = shipped
    probe = circuitsvis_bundle()[1000:1200]
    state = {"cell": "c1", "count": 1}
    _fake_kernel(monkeypatch, state)
    try:
        first = res.attention._repr_html_()
        second_same_cell = res.components._repr_html_()
        state.update(cell="c2", count=2)
        later = [res.attention._repr_html_() for _ in range(10)]
        state.update(cell="c1", count=3)  # the cell that carried it runs again
        rerun = res.attention._repr_html_()
        assert probe in first and probe not in second_same_cell and probe in rerun
        assert all(probe not in h and len(h) < 60_000 for h in later)
        total = len(first) + sum(map(len, later))
        assert total < 2_000_000, total  # ten attention views, well under 2 MB
        _repr.notebook_bundle("always")
        assert probe in res.attention._repr_html_()
        with pytest.raises(tp.errors.InputError, match="'once', 'always'"):
            _repr.notebook_bundle("sometimes")
    finally:
        _repr.notebook_bundle("once")
    # a file is always whole
    assert res.attention.to_html().count(probe) == 1


@pytest.mark.browser
def test_saved_outputs_render_in_order_without_repeating_the_bundle(shipped, monkeypatch, offline,
                                                                    tmp_path):
    """Outputs of a saved notebook, joined in order as a browser shows them: every view draws."""
    _, res = shipped
    state = {"cell": "c1", "count": 1}
    _fake_kernel(monkeypatch, state)
    try:
        outs = []
        for i in range(3):
            state.update(cell=f"c{i}", count=i + 1)
            outs.append(res.attention._repr_html_())
    finally:
        _repr.notebook_bundle("once")
    page_file = tmp_path / "nb.html"
    page_file.write_text("<!DOCTYPE html><html><body>" + "\n".join(outs) + "</body></html>",
                         encoding="utf-8")
    offline.goto(page_file)
    page = offline.page
    page.wait_for_function("document.querySelectorAll('.tlp-layer-host canvas').length >= 3")
    painted = offline.painted(".tlp-layers")
    assert len(painted) >= 3 and min(painted) > 100, painted
    offline.assert_clean()


@pytest.mark.browser
def test_attention_view_prompt_selector_and_token_hover(shipped, offline, tmp_path):  # noqa: F811
    _, res = shipped
    path = res.attention.save_html(tmp_path / "att.html")
    offline.goto(path)
    page = offline.page
    page.get_by_text("L0H0 Zoomed").wait_for()
    page.select_option("select.tlp-prompt-select", "1")
    assert page.get_attribute(".tlp-layers", "data-prompt") == "1"
    toks = page.locator(".tlp-hover .tlp-tok")
    assert toks.count() == len(res.inputs.valid_str_tokens(1))
    assert toks.nth(2).inner_text() == " gave"
    toks.nth(2).hover()
    info = page.locator(".tlp-hover-info").inner_text()
    assert info.startswith('" gave" (position 2) attends most to') and "attended most by" in info
    # the hover reads the pattern: the shown target is the argmax of the mean-over-heads row
    pat = res.attention.pattern[0, 1].double().mean(0)
    best = int(pat[2, :3].argmax())
    assert f'attends most to "{res.inputs.valid_str_tokens(1)[best]}"' in info, info
    page.select_option("select.tlp-head-select", "1")  # one head
    toks.nth(0).hover()
    toks.nth(2).hover()
    info = page.locator(".tlp-hover-info").inner_text()
    one = res.attention.pattern[0, 1, 1].double()
    best = res.inputs.valid_str_tokens(1)[int(one[2, :3].argmax())]
    assert info.endswith("[L0H1]") and f'attends most to "{best}"' in info, info
    offline.assert_clean()


def test_capture_views_show_something(shipped):
    _, res = shipped
    comp = res.components
    page = comp._build_page()
    assert page.n_views == 3  # one token view per prompt
    from render_helpers import mounted

    (component, props), *_ = mounted(page.to_html())
    assert component == "ColoredTokensMulti"
    assert props["labels"][:2] == ["|attn_out| block 0", "|mlp_out| block 0"]
    want = comp.attn_out[0, 0, :, :].double().norm(dim=-1)[comp.mask[0]]
    np.testing.assert_allclose(np.array(props["values"])[:, 0], want.numpy(), rtol=1e-3)
    act = tp.run(tp.load_model(), ["Mary saw her brother."],
                 tp.Activation("blocks.1.mlp.hook_post")).activation
    ((_, aprops),) = mounted(act._build_page().to_html())
    np.testing.assert_allclose(np.array(aprops["values"])[:, 0],
                               act.values[0, 0].double().norm(dim=-1).numpy(), rtol=1e-3)
    # choose the prompt and layer of the attention view
    att = res.attention.view(prompt=2, layer=1)
    from render_helpers import widgets

    kinds = dict(widgets(att.to_html()))
    assert kinds["layers"]["initialPrompt"] == 2 and kinds["layers"]["initial"] == 1
    with pytest.raises(tp.errors.InputError, match="prompt 7 .* 0, 1, 2"):
        res.attention.view(prompt=7)


def test_attention_view_4d_pattern_message():
    pat = np.tril(np.ones((3, 2, 4, 4)))
    with pytest.raises(tp.errors.LayerError, match="read as \\[layer, head, dest, src\\] with 3 layers"):
        tp.render.attention_view(pat, list("abcd"))
    # under the jaxtyping+beartype test hook the annotation rejects a 5-D pattern first
    with pytest.raises((tp.errors.InputError, TypeError), match="for one prompt|pattern"):
        tp.render.attention_view(pat[None], list("abcd"))
