"""MkDocs hooks (`hooks:` in mkdocs.yml).

1. The site shows files that live elsewhere in the repository, without copies or
   symlinks under docs/: the executed notebooks (notebooks/*.ipynb, rendered with
   their stored outputs by mkdocs-jupyter, never executed) and the benchmark plots
   (benchmarks/results/*.png).
2. The benchmarks page holds a marker that is replaced by tables built from
   benchmarks/results/results.json, so the page shows the numbers of the last full run
   of benchmarks/adjoints.py, whatever they are.
3. Every public name of the package (the names `reversible_adjoint/__init__.py`
   re-exports) must have an entry (`::: reversible_adjoint.NAME`) in docs/api/: a
   name without one is a warning, which fails `mkdocs build --strict`.
4. A notebook page's table of contents is taken from its rendered headings: the one
   mkdocs-jupyter builds drops inline code from the headings, and so links to anchors
   that do not exist ("#same-gradients-as" for "Same gradients as `X`").
"""

import ast
import html as html_lib
import json
import logging
import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MARKER = "<!-- tables from benchmarks/results/results.json -->"
# A warning here fails `mkdocs build --strict`, as MkDocs's own do.
log = logging.getLogger("mkdocs.hooks.reversible_adjoint")


def _outside_files():
    """Paths, relative to the repository, of the files the site shows from outside
    docs/. Each keeps its path in the site: notebooks/01_quickstart.ipynb is the page
    notebooks/01_quickstart/."""
    yield from sorted((ROOT / "notebooks").glob("*.ipynb"))
    yield from sorted(RESULTS.glob("*.png"))


# Before mkdocs-jupyter's `on_files` (default priority 0), which must see the notebooks.
@event_priority(100)
def on_files(files, config):
    for path in _outside_files():
        files.append(
            File(
                path.relative_to(ROOT).as_posix(),
                src_dir=str(ROOT),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    return files


def _public_names():
    """The names `reversible_adjoint/__init__.py` re-exports (`import X as X`)."""
    tree = ast.parse((ROOT / "reversible_adjoint" / "__init__.py").read_text())
    return {
        alias.asname
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.asname is not None and alias.asname == alias.name
    }


def on_pre_build(config):
    api = Path(config.docs_dir) / "api"
    documented = set()
    for page in api.glob("*.md"):
        documented.update(
            re.findall(r"^::: reversible_adjoint\.(\w+)\s*$", page.read_text(), re.M)
        )
    for name in sorted(_public_names() - documented):
        log.warning(
            f"`reversible_adjoint.{name}` is public but has no API entry: add "
            f"`::: reversible_adjoint.{name}` to a page of docs/api/."
        )


_PROBLEMS = {
    "mlp": "Neural ODE: MLP vector field (width 128, depth 2), batch 32 x state 64",
    "sde": (
        "Neural SDE: MLP drift and diagonal diffusion, batch 32 x state 64, "
        "`VirtualBrownianTree`"
    ),
    "large": "Larger state: the neural ODE with batch 256 x state 256 (memory only)",
}

# Short names, so that a table fits the page; the page's text gives the long ones.
_SHORT = {
    "RecursiveCheckpointAdjoint": "RCA",
    "RecursiveCheckpointAdjoint(checkpoints=max_steps)": "RCA, every step",
    "AsynchronousLeapfrog": "ALF",
}


def _number(value, fmt):
    return "" if value is None else format(value, fmt)


def _error(value):
    if value is None:
        return ""
    return "0" if value == 0 else f"{value:.1e}"


def _table(rows):
    timed = any(row.get("time") is not None for row in rows)
    head = ["steps", "solver", "adjoint"]
    if timed:
        head += ["gradient (ms)", "gradient / forward"]
    head += ["compile (s)", "temp memory (MiB)"]
    if timed:
        head += ["error vs RCA (float64)"]
    # Numbers right-aligned: every column but the solver's and the adjoint's.
    align = ["---:" if name not in ("solver", "adjoint") else "---" for name in head]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        name = _SHORT.get(row["method"], row["method"])
        if name == "ReversibleAdjoint":
            name = "**ReversibleAdjoint**"
        solver = _SHORT.get(row["solver"], row["solver"])
        cells = [f"{row['steps']:,}", solver, name]
        if timed:
            time = row.get("time")
            cells += [
                _number(None if time is None else 1000 * time, ".1f"),
                _number(row.get("ratio"), ".2f"),
            ]
        cells += [
            _number(row.get("compile_time"), ".2f"),
            _number(row["memory"] / 2**20, ".2f"),
        ]
        if timed:
            cells += [_error(row.get("error"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _results_markdown():
    results = json.loads((RESULTS / "results.json").read_text())
    rows = results["rows"]
    parts = [
        f"Measured on `{results.get('platform', '?')}`, device "
        f"`{results.get('device', '?')}`."
    ]
    for problem, title in _PROBLEMS.items():
        chosen = [row for row in rows if row["problem"] == problem]
        if chosen:
            parts += [f"### {title}", _table(chosen)]
    return "\n\n".join(parts) + "\n"


def on_page_markdown(markdown, page, config, files):
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, _results_markdown())
    return markdown


_HEADING = re.compile(r'<h([1-6])[^>]*\bid="([^"]+)"[^>]*>(.*?)</h\1>', re.DOTALL)
_ANCHOR_LINK = re.compile(r'<a class="anchor-link"[^>]*>.*?</a>', re.DOTALL)
_TAG = re.compile(r"<[^>]+>")


def _toc_items(items):
    for item in items:
        yield item
        yield from _toc_items(item.children)


def on_page_content(html, page, config, files):
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    headings = [
        (
            int(level),
            anchor,
            html_lib.unescape(_TAG.sub("", _ANCHOR_LINK.sub("", inner))),
        )
        for level, anchor, inner in _HEADING.findall(html)
    ]
    items = list(_toc_items(page.toc))
    # Both list the notebook's headings, in order.
    if [item.level for item in items] != [level for level, _, _ in headings]:
        log.warning(
            f"{page.file.src_uri}: its table of contents does not match its headings, "
            "so its links may point to anchors that do not exist (docs/hooks.py)."
        )
        return html
    for item, (_, anchor, title) in zip(items, headings, strict=True):
        item.id = anchor
        # Maths is typeset in the page, not in the navigation: `$N$` reads `N`.
        item.title = title.replace("$", "").strip()
    return html
