"""Notebooks in a real JupyterLab, in headless Chromium (Debian's), driven by Playwright, run with JupyterLab's own
Run All Cells: what a reader sees. The widgets tutorial, the first chapter, the Chinese tutorial and `11_widgets`:
every cell runs, no cell shows an error or anything on stderr (JupyterLab's red output), each widget cell shows exactly
one widget and no other figure, each notebook finishes within the time its text states; in the tutorial the loss plot
redraws while training runs, a control changes a figure, and each widget is photographed. The static site typesets
its formulas with the network refused.

Screenshots go to `test-output/browser/` (or $EMBED_NB_TEST_OUTPUT/browser)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
import pytest
from conftest import ROOT, log_records

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TUTORIAL = ROOT / "nbs" / "tutorials" / "widgets.ipynb"
CHINESE = ROOT / "nbs" / "tutorials" / "insuranceqa_zh.ipynb"
FIRST = ROOT / "nbs" / "tutorials" / "insuranceqa.ipynb"
WIDGETS_NB = ROOT / "nbs" / "11_widgets.ipynb"
OUT = Path(os.environ.get("EMBED_NB_TEST_OUTPUT", ROOT / "test-output")) / "browser"
# Chromium's own background traffic is refused on a closed network: switch it off.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path, request):
    """JupyterLab on loopback serving a copy of the notebook `request.param` (default: the tutorial); yields
    (url, folder)."""
    notebook = getattr(request, "param", TUTORIAL)
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: `make test` installs Debian's chromium (apt-get install chromium)"
        )
    shutil.copy(notebook, tmp_path / notebook.name)
    settings = tmp_path / ".jupyter" / "lab" / "user-settings" / "@jupyterlab"
    for ext, name, value in [
        ("notebook-extension", "tracker", {"windowingMode": "none"}),  # every cell in the DOM
        ("apputils-extension", "notification", {"fetchNews": "false"}),
    ]:
        (settings / ext).mkdir(parents=True, exist_ok=True)
        (settings / ext / f"{name}.jupyterlab-settings").write_text(json.dumps(value))
    port, token = free_port(), "embed-nb-test"
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / ".jupyter"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / ".runtime"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    log = open(tmp_path / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={tmp_path}",
            "--allow-root",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start:\n" + (tmp_path / "jupyterlab.log").read_text()[-3000:])
        yield f"{url}/lab/tree/{notebook.name}?reset&token={token}", tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def image_of(page, widget_class: str) -> str:
    "The PNG (data URL) the widget shows now."
    return page.locator(f".{widget_class} img").first.get_attribute("src")


STDERR = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
ERRORS_JS = f"""() => Array.from(document.querySelectorAll("{STDERR}"))
    .map(e => e.innerText).filter(t => t.startsWith('-----') || t.includes('Traceback (most recent call last)'))"""
# Everything JupyterLab shows in red: stderr output (warnings included) and errors.
RED_JS = f"""() => Array.from(document.querySelectorAll("{STDERR}")).map(e => e.innerText.slice(0, 300))"""
# Per code cell: its first source line, the embed_nb widgets its outputs show, and the pictures outside them.
CELLS_JS = """() => Array.from(document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell')).map(c => {
    const outs = c.querySelector('.jp-OutputArea');
    const widgets = outs ? outs.querySelectorAll('[class*="embed-nb-"]') : [];
    const stray = outs ? Array.from(outs.querySelectorAll('img')).filter(i => !i.closest('[class*="embed-nb-"]')) : [];
    return {source: c.querySelector('.jp-InputArea .cm-content')?.innerText.split('\\n')[0] || '',
            widgets: widgets.length,
            controls: widgets.length ? widgets[0].querySelectorAll('select, input').length : 0,
            stray: stray.length};
})"""
counted = lambda prompts: [t for t in prompts if t.strip()[1:-2].strip().isdigit()]  # "[12]:"


def open_notebook(page, url: str, notebook: Path) -> int:
    "Open the notebook, wait for its kernel; the number of its code cells."
    page.goto(url)
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)  # the kernel is connected
    n_code = page.locator(".jp-NotebookPanel .jp-CodeCell").count()
    assert n_code == sum(c["cell_type"] == "code" for c in json.loads(notebook.read_text())["cells"])
    return n_code


def run_all(page, n_code: int, limit: float, tick=lambda: None) -> float:
    "Run All Cells from JupyterLab's own menu and wait until every cell ran (or one failed); the seconds it took."
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    start = time.time()
    while time.time() < start + limit:  # done when every code cell has an execution count, or a cell failed
        tick()
        prompts = page.locator(".jp-NotebookPanel .jp-CodeCell .jp-InputPrompt").all_inner_texts()
        if page.evaluate(ERRORS_JS) or len(counted(prompts)) == n_code:
            break
        time.sleep(0.5)
    took = time.time() - start
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
    errors = page.evaluate(ERRORS_JS)
    assert not errors, "a cell raised:\n" + "\n".join(errors)[-4000:]
    prompts = page.locator(".jp-NotebookPanel .jp-CodeCell .jp-InputPrompt").all_inner_texts()
    assert not [t for t in prompts if "*" in t], f"cells still running after {limit:.0f} s: {prompts}"
    assert len(counted(prompts)) == n_code, prompts
    return took


def check_reader_view(page, n_widgets: int) -> list[dict]:
    "No red output anywhere; `n_widgets` cells show a widget, each exactly one with its controls and no other picture."
    red = page.evaluate(RED_JS)
    assert not red, f"{len(red)} outputs in red (stderr), e.g.: {red[:3]}"
    cells = page.evaluate(CELLS_JS)
    shown = [c for c in cells if c["widgets"]]
    assert len(shown) == n_widgets, [c["source"] for c in shown]
    for c in shown:
        assert c["widgets"] == 1 and c["stray"] == 0 and c["controls"] >= 1, c  # one widget, its controls, no copy
    return cells


@contextmanager
def chromium_page():
    "A page of Debian's headless Chromium, driven by Playwright, closed after the block."
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield browser.new_page(viewport={"width": 1600, "height": 1000})
        finally:
            browser.close()


def test_widgets_tutorial_in_jupyterlab(lab):
    url, folder = lab
    with chromium_page() as page:
        n_code = open_notebook(page, url, TUTORIAL)
        live = set()  # the loss figures seen while the notebook runs: it redraws as training logs

        def tick():
            src = page.evaluate("() => document.querySelector('.embed-nb-losswidget img')?.src || null")
            if src:
                live.add(src)

        took = run_all(page, n_code, limit=900, tick=tick)
        page.screenshot(path=str(OUT / "notebook.png"), full_page=True)
        assert took < 360, f"the tutorial says JupyterLab's Run All takes under 6 minutes here; it took {took:.0f} s"
        (OUT / "tutorial_seconds.txt").write_text(f"{took:.1f}\n")
        cells = check_reader_view(page, n_widgets=3)
        # Besides its widgets, the tutorial draws nothing: no figure left over from them in any other cell.
        assert not [c for c in cells if not c["widgets"] and c["stray"]], cells

        assert len(live) >= 3, f"the loss widget was drawn {len(live)} times while training ran"
        # The three widgets rendered, with their figures.
        for cls in ("embed-nb-losswidget", "embed-nb-similaritywidget", "embed-nb-mrlwidget"):
            w = page.locator(f".{cls}")
            assert w.count() == 1, f"{cls} not rendered"
            assert image_of(page, cls).startswith("data:image/png"), f"{cls} shows no figure"

        # A control changes the figure: the similarity widget's dimension, then the MRL widget's metric.
        before = image_of(page, "embed-nb-similaritywidget")
        page.locator(".embed-nb-similaritywidget select").nth(1).select_option(label="384")
        page.wait_for_function(
            "([cls, old]) => { const i = document.querySelector(`.${cls} img`); return i && i.src !== old; }",
            arg=["embed-nb-similaritywidget", before],
            timeout=60_000,
        )
        assert image_of(page, "embed-nb-similaritywidget") != before
        before = image_of(page, "embed-nb-mrlwidget")
        page.locator(".embed-nb-mrlwidget select").first.select_option(label="mrr@10")
        page.wait_for_function(
            "([cls, old]) => { const i = document.querySelector(`.${cls} img`); return i && i.src !== old; }",
            arg=["embed-nb-mrlwidget", before],
            timeout=60_000,
        )

        for cls, name in [
            ("embed-nb-losswidget", "loss"),
            ("embed-nb-similaritywidget", "similarity"),
            ("embed-nb-mrlwidget", "mrl"),
        ]:
            w = page.locator(f".{cls}")
            w.scroll_into_view_if_needed()
            w.screenshot(path=str(OUT / f"{name}_widget.png"))
            assert (OUT / f"{name}_widget.png").stat().st_size > 5000
        # Saved from the browser, the notebook holds every output: none is an error; each widget cell keeps its
        # figure as a PNG beside the widget, for readers without a kernel.
        page.keyboard.press("Control+s")
        page.wait_for_function("() => !document.querySelector('.jp-mod-dirty')", timeout=30_000)
        saved = json.loads((folder / "widgets.ipynb").read_text())
        outputs = [o for c in saved["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
        assert not [o for o in outputs if o["output_type"] == "error"], [
            o for o in outputs if o["output_type"] == "error"
        ]
        assert all(c["execution_count"] for c in saved["cells"] if c["cell_type"] == "code")
        views = [o["data"] for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert sum("image/png" in d for d in views) == 3, [sorted(d) for d in views]
    # The notebook's own checks ran in the kernel; the run it made is real.
    assert [r["step"] for r in log_records(folder / "runs" / "tutorial") if "eval" in r] == [0, 6, 12]


@pytest.mark.parametrize("lab", [WIDGETS_NB], indirect=True)
def test_widgets_notebook_in_jupyterlab(lab):
    "`11_widgets` run in JupyterLab shows each of its widgets live, once, with its controls, and no empty figure."
    url, folder = lab
    with chromium_page() as page:
        n_code = open_notebook(page, url, WIDGETS_NB)
        took = run_all(page, n_code, limit=600)
        page.screenshot(path=str(OUT / "11_widgets.png"), full_page=True)
        assert took < 360, f"11_widgets took {took:.0f} s in JupyterLab (it says under 6 minutes)"
        (OUT / "11_widgets_seconds.txt").write_text(f"{took:.1f}\n")
        cells = check_reader_view(page, n_widgets=3)
        shown = [c["source"].split("  #")[0] for c in cells if c["widgets"]]
        assert shown == ["LossWidget(real)", "MRLWidget(eval_results(real))", "sw"], cells
        for cls in ("embed-nb-losswidget", "embed-nb-mrlwidget", "embed-nb-similaritywidget"):
            assert image_of(page, cls).startswith("data:image/png"), f"{cls} shows no figure"


# The tutorials that fine-tune on InsuranceQA: the run folder each saves its model in, and the figures each draws.
REAL_DATA = {FIRST: ("first", 3), CHINESE: ("zh", 2)}


@pytest.mark.parametrize("lab", list(REAL_DATA), indirect=True, ids=["first_chapter", "chinese"])
def test_real_data_tutorial_in_jupyterlab(lab):
    """The first chapter and the Chinese tutorial, run in JupyterLab: every cell runs (one checks that the fine-tuned
    model scores above the base model at every dimension on the valid questions), nothing in red, their figures drawn,
    the model saved."""
    url, folder = lab
    notebook = next(nb for nb in REAL_DATA if (folder / nb.name).is_file())
    run, n_figures = REAL_DATA[notebook]
    with chromium_page() as page:
        n_code = open_notebook(page, url, notebook)
        took = run_all(page, n_code, limit=900)
        page.screenshot(path=str(OUT / f"{notebook.stem}.png"), full_page=True)
        (OUT / f"{notebook.stem}_seconds.txt").write_text(f"{took:.1f}\n")
        check_reader_view(page, n_widgets=0)
        figures = page.locator(".jp-NotebookPanel .jp-OutputArea-output img").count()
        assert figures == n_figures, f"{figures} figures"
    assert (folder / "runs" / run / "model" / "modules.json").is_file()


def test_site_typesets_formulas_offline(tmp_path):
    "The static site (`make site`), read in Chromium with every request outside the site refused: MathJax typesets."
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "site.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    refused = []

    def only_files(route, request):
        if request.url.startswith("file://"):
            return route.continue_()
        refused.append(request.url)
        return route.abort()

    with chromium_page() as page:
        page.route("**/*", only_files)
        page.goto((tmp_path / "02_losses.html").as_uri())
        page.wait_for_function("window.MathJax && MathJax.Hub && MathJax.Hub.queue.pending === 0", timeout=60_000)
        typeset = page.evaluate("document.querySelectorAll('.MathJax_CHTML, .MathJax, .MathJax_SVG').length")
        errors = page.evaluate("document.querySelectorAll('.MathJax_Error, merror').length")
        page.screenshot(path=str(OUT / "site_02_losses.png"))
    assert typeset > 5 and errors == 0, (typeset, errors)
    assert not refused, refused[:5]
