"""The notebooks as a static HTML site, with the outputs they were committed with: `python tools/site.py [_site]`
(`make site`). nbconvert's JupyterLab template, one page per notebook, links between notebooks made links between
pages, and a bar of links to every page at the top of each. Nothing is run; nothing is fetched while building (the
pages load MathJax from its CDN when read, for the formulas)."""

import html
import re
import sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"


def pages() -> list[tuple[Path, str]]:
    "(notebook, page path within the site): the index first, then the numbered notebooks, then the tutorials."
    out = [(NBS / "index.ipynb", "index.html")]
    out += [(p, p.stem + ".html") for p in sorted(NBS.glob("[0-9]*.ipynb"))]
    out += [(p, f"tutorials/{p.stem}.html") for p in sorted((NBS / "tutorials").glob("*.ipynb"))]
    return out


def title(nb) -> str:
    "The notebook's first heading."
    for cell in nb.cells:
        m = re.search(r"^#\s+(.+)$", cell.source, re.M) if cell.cell_type == "markdown" else None
        if m:
            return m.group(1).strip()
    return "embed_nb"


def relink(body: str, depth: int) -> str:
    "Links to notebooks (`02_losses.ipynb`, `nbs/02_losses.ipynb`, `tutorials/widgets.ipynb`) made links to pages."
    up = "../" * depth

    def page(m):
        target = m.group(2)
        target = target[4:] if target.startswith("nbs/") else target
        return f'{m.group(1)}"{up}{target[:-6]}.html{m.group(3) or ""}"'

    return re.sub(r'(href=)"(?!https?:)([^"#]*?\.ipynb)(#[^"]*)?"', page, body)


def build(out: Path) -> list[Path]:
    "Write the site under `out`; the pages written."
    exporter = HTMLExporter(template_name="lab")
    entries = [(nb_path, rel, nbformat.read(nb_path, as_version=4)) for nb_path, rel in pages()]
    written = []
    for nb_path, rel, nb in entries:
        depth = rel.count("/")
        nav = " · ".join(f'<a href="{"../" * depth}{r}">{html.escape(title(n))}</a>' for _, r, n in entries)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title(nb)}})
        body = relink(body, depth)
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
