"""The notebooks as a static HTML site, with the outputs they were committed with: `python tools/site.py [_site]`
(`make site`). nbconvert's JupyterLab template, one page per notebook, links between notebooks made links between
pages, `#| hide` cells and `#| ...` directives left out (as nbdev's own pages), and a bar of links to every page at
the top of each, in the course's reading order (`COURSE`). Nothing is run and
nothing is fetched, neither while building nor when a page is read: the formulas are typeset by the MathJax that the
`jupyter-server-mathjax` package ships, copied into the site."""

import html
import os
import re
import shutil
import sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"


COURSE = [  # the bar's groups, each in reading order (the course map of README.md); other notebooks follow, in "More"
    ("Start", ["index", "tutorials/insuranceqa", "tutorials/widgets", "tutorials/insuranceqa_zh"]),
    (
        "Course",
        [
            "01_data",
            "02_losses",
            "06_eval",
            "09_train",
            "10_mine",
            "tutorials/your_data",
            "04_distributed",
            "05_gradcache",
        ],
    ),
    ("Reference", ["00_core", "03_model", "07_run_folder", "08_card", "11_widgets", "12_cli"]),
]
MATHJAX = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"  # within the site


def pages() -> list[tuple[Path, str, str]]:
    "(notebook, page path within the site, group): every notebook, in the order of `COURSE`, then the others."
    found = {"index": NBS / "index.ipynb"}
    found |= {p.stem: p for p in sorted(NBS.glob("[0-9]*.ipynb"))}
    found |= {f"tutorials/{p.stem}": p for p in sorted((NBS / "tutorials").glob("*.ipynb"))}
    order = [(name, group) for group, names in COURSE for name in names if name in found]
    order += [(name, "More") for name in found if name not in dict(order)]
    return [(found[name], f"{name}.html", group) for name, group in order]


def mathjax_folder() -> Path:
    "The MathJax 2 that `jupyter-server-mathjax` ships."
    import jupyter_server_mathjax

    return Path(jupyter_server_mathjax.__file__).parent / "static"


def title(nb) -> str:
    "The notebook's first heading."
    for cell in nb.cells:
        m = re.search(r"^#\s+(.+)$", cell.source, re.M) if cell.cell_type == "markdown" else None
        if m:
            return m.group(1).strip()
    return "embed_nb"


def relink(body: str, rel: str) -> str:
    """Links to notebooks (`02_losses.ipynb`, `nbs/02_losses.ipynb`, `tutorials/widgets.ipynb`, from a tutorial
    `widgets.ipynb` or `../02_losses.ipynb`) made links to pages, from the page at `rel`."""
    here = Path(rel).parent  # the page's folder within the site, as the notebook's within nbs/

    def page(m):
        target = m.group(2)
        if target.startswith("nbs/"):  # from the repository root (the README's links)
            within = Path(target[4:])
        else:
            within = Path(os.path.normpath(here / target))
        return f'{m.group(1)}"{os.path.relpath(within.with_suffix(".html"), here)}{m.group(3) or ""}"'

    return re.sub(r'(href=)"(?!https?:)([^"#]*?\.ipynb)(#[^"]*)?"', page, body)


def for_readers(nb):
    "The notebook as nbdev's own pages show it: `#| hide` and `#| default_exp` cells left out, `#| ...` lines removed."
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            flags = re.findall(r"^#\|\s*([\w-]+)", cell.source, re.M)
            if {"hide", "default_exp"} & set(flags):
                continue
            cell.source = re.sub(r"^#\|.*\n?", "", cell.source, flags=re.M)
        cells.append(cell)
    nb.cells = cells
    return nb


def build(out: Path) -> list[Path]:
    "Write the site under `out`; the pages written."
    exporter = HTMLExporter(template_name="lab")
    entries = [(rel, group, for_readers(nbformat.read(nb_path, as_version=4))) for nb_path, rel, group in pages()]
    shutil.copytree(mathjax_folder(), out / "mathjax", dirs_exist_ok=True)
    written = []
    for rel, _, nb in entries:
        depth = rel.count("/")
        groups = {}
        for r, group, n in entries:
            groups.setdefault(group, []).append(f'<a href="{"../" * depth}{r}">{html.escape(title(n))}</a>')
        nav = " | ".join(f"<b>{g}</b>: " + " · ".join(links) for g, links in groups.items())
        exporter.mathjax_url = "../" * depth + MATHJAX
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title(nb)}})
        body = relink(body, rel)
        # require.js (the template loads it from a CDN for live widgets, which the committed notebooks do not keep)
        body = re.sub(r'<script src="https?://[^"]*/require(\.min)?\.js"></script>', "", body)
        bar = f'<nav style="padding:0.6em 1em;font:13px sans-serif;border-bottom:1px solid #ddd">{nav}</nav>'
        body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + bar, body, count=1)
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(body, encoding="utf-8")
        written.append(dest)
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "_site")
    written = build(out)
    print(f"{len(written)} pages in {out}; open {out / 'index.html'}")
