"""The notebooks as committed: their outputs kept (every teaching notebook shows its figures without running, with no
error, no live-widget view and no progress bar left in it), and the static HTML site built from them (`make site`):
one page per notebook, every link between pages leads to a page, and the figures are in the pages."""

import json
import re
import subprocess
import sys
import pytest
from conftest import ROOT

NBS = ROOT / "nbs"
# The notebooks that draw (each idea with a figure), and the least number of pictures each must keep.
DRAWN = {
    "01_data": 2,
    "02_losses": 5,
    "04_distributed": 1,
    "05_gradcache": 1,
    "06_eval": 1,
    "09_train": 2,
    "10_mine": 1,
    "11_widgets": 4,
    "tutorials/widgets": 3,
    "tutorials/insuranceqa_zh": 2,
    "tutorials/insuranceqa": 3,
    "tutorials/your_data": 1,
}


def outputs(name: str) -> list[dict]:
    nb = json.loads((NBS / f"{name}.ipynb").read_text())
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


@pytest.mark.parametrize("name", sorted(DRAWN))
def test_committed_outputs_show_figures(name):
    outs = outputs(name)
    pngs = [o for o in outs if "image/png" in o.get("data", {})]
    assert len(pngs) >= DRAWN[name], f"{name}.ipynb keeps {len(pngs)} figures (run `make outputs`)"
    assert not [o for o in outs if o["output_type"] == "error"], f"{name}.ipynb was committed with an error"
    views = [o for o in outs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert not views, f"{name}.ipynb keeps {len(views)} live-widget views (progress bars?) that show nothing saved"


def test_static_site(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "site.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    pages = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.html") if "mathjax" not in p.parts)
    expected = (
        ["index.html"]
        + [p.stem + ".html" for p in NBS.glob("[0-9]*.ipynb")]
        + [f"tutorials/{p.stem}.html" for p in (NBS / "tutorials").glob("*.ipynb")]
    )
    assert pages == sorted(expected)
    for page in (tmp_path / p for p in pages):
        text = page.read_text()
        for href in re.findall(r'href="([^"#:]+\.html)', text):  # links between pages (not to the web)
            assert (page.parent / href).resolve().is_file(), f"{page.name}: link to {href} leads nowhere"
        assert not re.findall(r'href="(?!https?:)[^"]*\.ipynb', text), page  # no link left pointing at a notebook
        # read offline: no script or style sheet from the web (MathJax is the site's own copy)
        assert not re.findall(r'<(?:script|link)[^>]*(?:src|href)="https?://', text), page
    assert (tmp_path / "mathjax" / "MathJax.js").is_file()
    assert 'src="../mathjax/MathJax.js?config=' in (tmp_path / "tutorials" / "widgets.html").read_text()
    nav = re.search(r"<nav.*?</nav>", (tmp_path / "index.html").read_text(), re.S).group(0)
    assert [g for g in re.findall(r"<b>(\w+)</b>", nav)][:3] == ["Start", "Course", "Reference"]
    assert nav.index("01_data.html") < nav.index("02_losses.html") < nav.index("00_core.html")  # reading order
    losses = (tmp_path / "02_losses.html").read_text()
    assert losses.count("data:image/png") >= DRAWN["02_losses"]  # the committed figures are in the page
