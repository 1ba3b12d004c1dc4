"""The day-one notebook runs headless (nbclient + ipykernel) with every output visible and the saved
file under 2 MB: figures are PNGs with no %matplotlib, results are short cards, and the circuitsvis
bundle is in the notebook once however many views it holds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "day_one.ipynb"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is installed on tl4 only")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is installed on tl4 only")
    pytest.importorskip("ipykernel", reason="ipykernel is installed on tl4 only")
    out = tmp_path_factory.mktemp("nb")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env_path = os.environ.get("PYTHONPATH", "")
    src = str(ROOT / "src")
    if src not in env_path.split(os.pathsep):  # the kernel imports this checkout's tlprobes
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env_path]))
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(out)}})
    client.execute()
    path = out / "day_one.ipynb"
    nbformat.write(nb, path)
    return nb, path, out


@pytest.mark.slow
def test_day_one_runs_and_every_output_is_visible(executed):
    nb, path, out = executed
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 12
    for i, cell in enumerate(code):
        kinds = [o.output_type for o in cell.outputs]
        assert "error" not in kinds, (i, cell.source)
        data = [o.get("data", {}) for o in cell.outputs if o.output_type in ("execute_result",
                                                                            "display_data")]
        assert data, f"cell {i} shows nothing: {cell.source!r}"
        for d in data:
            # something a person can see: a picture, a view or a card, never a bare Figure repr
            assert {"image/png", "text/html"} & set(d) or not d.get("text/plain", "").startswith(
                "<Figure"), (i, d.get("text/plain"))
    plots = [c for c in code if c.source.strip().endswith(".plot()")]
    assert plots and all(any("image/png" in o.get("data", {}) for o in c.outputs) for c in plots)
    assert (out / "day_one_report.html").exists()


@pytest.mark.slow
def test_day_one_is_small_and_sends_the_bundle_once(executed):
    nb, path, _ = executed
    size = path.stat().st_size
    assert size < 2_000_000, size
    from tlprobes.render._runtime import circuitsvis_bundle

    probe = circuitsvis_bundle()[1000:1200]
    text = path.read_text(encoding="utf-8")
    # JSON-escaped in the file; count in the decoded outputs instead
    html = [o["data"]["text/html"] for c in json.loads(text)["cells"] if c["cell_type"] == "code"
            for o in c["outputs"] if "text/html" in o.get("data", {})]
    html = ["".join(h) if isinstance(h, list) else h for h in html]
    views = sum("tlp.mount(" in h or "tlp.layers(" in h for h in html)
    assert views >= 4
    assert sum(probe in h for h in html) == 1
    # analyzer cards and reprs stay short
    for c in nb.cells:
        for o in getattr(c, "outputs", []):
            plain = o.get("data", {}).get("text/plain", "")
            assert len(plain) < 2000, plain[:200]
