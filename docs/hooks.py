"""MkDocs hooks: the pages the site shows but the repository keeps elsewhere.

Nothing is copied by hand, so no number on the site can fall behind its source:
- README.md is the home page (index.md); its links into the site (`docs/...`) lose the prefix.
- benchmarks/ (RESULTS.md, README.md, investigations/) and experiments/README.md appear under
  the same paths, so the links between them resolve as they do on a repository browser.
- studies/index.md lists the study pages `python -m experiments.docs` wrote into docs/studies/
  where it says `<!-- studies:pages -->`, each by its first heading, and the Studies section
  of the navigation lists them after the index.
"""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File
from mkdocs.structure.nav import Section
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parent.parent
MIRRORED = ("benchmarks/RESULTS.md", "benchmarks/README.md", "benchmarks/investigations/*.md",
            "experiments/README.md")
STUDIES_MARK = "<!-- studies:pages -->"


def _mirrored():
    """(site path, source file) of every page kept outside docs/."""
    yield "index.md", ROOT / "README.md"
    for pattern in MIRRORED:
        for path in sorted(ROOT.glob(pattern)):
            yield path.relative_to(ROOT).as_posix(), path


def on_files(files, config):
    for uri, path in _mirrored():
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_nav(nav, config, files):
    """Each generated study page in the Studies section, after the index."""
    section = next((item for item in nav.items
                    if isinstance(item, Section) and item.title == "Studies"), None)
    if section is None:
        return nav
    for path in _study_pages(Path(config["docs_dir"]) / "studies"):
        file = files.get_file_from_path(f"studies/{path.name}")
        if file is None:
            continue
        page = file.page or Page(None, file, config)  # titled by its first heading when read
        page.parent = section
        section.children.insert(len(section.children) - 1, page)  # before the README table
    return nav


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "index.md":
        # README's links into the site are written from the repository root
        return re.sub(r"\]\(docs/", "](", markdown)
    if page.file.src_uri == "benchmarks/README.md":
        # a folder link works on a repository browser; the site has the list just below it
        return markdown.replace("](investigations/)", "](#investigations)")
    if page.file.src_uri == "studies/index.md":
        return markdown.replace(STUDIES_MARK, _studies_list(Path(config["docs_dir"]) / "studies"))
    return markdown


def _study_pages(folder: Path):
    """docs/studies/*.md but the index, sorted by name."""
    return [path for path in sorted(folder.glob("*.md")) if path.name != "index.md"]


def _heading(path: Path) -> str:
    """A page's first `# ` heading, or its file name."""
    return next((line[2:].strip() for line in path.read_text(encoding="utf-8").splitlines()
                 if line.startswith("# ")), path.stem)


def _studies_list(folder: Path) -> str:
    """A bulleted list of the study pages, by each page's first heading."""
    lines = [f"- [{_heading(path)}]({path.name})" for path in _study_pages(folder)]
    return "\n".join(lines) or ("*No study page has been generated in this checkout yet: "
                                "run `python -m experiments.docs`.*")


def on_serve(server, config, builder):
    """`mkdocs serve` rebuilds when a mirrored page changes, as it does for docs/."""
    for _, path in _mirrored():
        server.watch(str(path))
    return server
