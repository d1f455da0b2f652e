"""The documentation runs: every Python code block in README.md and docs/, and the API pages.

Code blocks. Each page is one test: its ```python blocks run in order in one namespace (a
later block uses what an earlier one defined), in a fresh working directory, and a block
followed by an ```output block must print that output, compared by `output_matches`:
- the text must match line for line (runs of spaces count as one);
- a line `...` stands for any number of lines, and `...` inside a line for any text;
- a number matches within 0.1 % of the one shown, and two numbers below 1e-2 match each
  other: those are round-off and finite-difference noise (a gradient check's errors), which
  differ from one CPU to the next; the claim is that they are tiny, and the `ok` / `PASS`
  beside them is compared as text.
A block that is not meant to run says why on the line before it, `<!-- not run: REASON -->`
(another library's code, a command that needs a second host): such blocks are counted, and
`test_few_blocks_are_not_run` keeps them few and explained. `python tests/test_docs.py` lists
every page's counts.

API pages. Every public name of the documented modules (their `__all__`; `funcnet`'s own
public names) has a docstring and a `::: path` entry on an API page, so the reference cannot
fall behind the code. A value with no docstring of its own (a Layer like `fn.relu`, a
constant) is documented by the string literal after its assignment, as MkDocs reads it.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import io
import re
import sys
import types
from pathlib import Path
from typing import List, NamedTuple, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MAX_NOT_RUN = 12  # blocks of another library's code or a second host's commands, each explained


class Block(NamedTuple):
    path: Path
    line: int                 # 1-based line of the opening fence
    lang: str
    code: str
    not_run: Optional[str]    # the reason, for a block marked not run
    output: Optional[str]     # the ```output block that follows, if any


def pages() -> List[Path]:
    """README.md and every Markdown page under docs/."""
    return [ROOT / "README.md"] + sorted(DOCS.rglob("*.md"))


_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)[^\n]*$")
_NOT_RUN = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->")


def _fenced(text: str):
    """(line, lang, code, marker line above) of each fenced block, indentation removed."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = len(m.group(1)), m.group(2), m.group(3).lower()
        above = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][indent:] if not lines[j][:indent].strip() else lines[j].lstrip())
            j += 1
        yield i + 1, lang, "\n".join(body) + "\n", above, j
        i = j + 1


def blocks(path: Path) -> List[Block]:
    """The Python blocks of a page, each with its not-run reason and claimed output."""
    found = list(_fenced(path.read_text(encoding="utf-8")))
    out = []
    for n, (line, lang, code, above, end) in enumerate(found):
        if lang not in ("python", "py"):
            continue
        reason = _NOT_RUN.search(above)
        output = None
        if n + 1 < len(found) and found[n + 1][1] == "output":
            between = path.read_text(encoding="utf-8").splitlines()[end + 1:found[n + 1][0] - 1]
            if not any(s.strip() for s in between):
                output = found[n + 1][2]
        out.append(Block(path, line, lang, code, reason.group(1) if reason else None, output))
    return out


# ----------------------------------------------------------------------------- output

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _numbers_match(want: str, got: str) -> bool:
    a, b = float(want), float(got)
    if abs(a) < 1e-2 and abs(b) < 1e-2:
        return True
    return abs(a - b) <= 1e-3 * max(abs(a), abs(b))


def _line_matches(want: str, got: str) -> bool:
    """One line: text equal (spaces collapsed), `...` any text, numbers as `_numbers_match`."""
    pattern, claimed = [], []
    for gap, piece in enumerate(" ".join(want.split()).split("...")):
        if gap:
            pattern.append("(?:.*?)")
        for k, text in enumerate(_NUMBER.split(piece)):
            if k:
                pattern.append(f"({_NUMBER.pattern})")
            pattern.append(re.escape(text))
        claimed += _NUMBER.findall(piece)
    m = re.fullmatch("".join(pattern), " ".join(got.split()))
    return m is not None and all(_numbers_match(w, g) for w, g in zip(claimed, m.groups()))


def output_matches(want: str, got: str) -> bool:
    """Whether printed output `got` is what a page claims, `want` (rules: module docstring)."""
    w = want.strip("\n").splitlines()
    g = got.strip("\n").splitlines()
    return _lines_match(w, g)


def _lines_match(w, g) -> bool:
    if not w:
        return not g
    if w[0].strip() == "...":
        return any(_lines_match(w[1:], g[k:]) for k in range(len(g) + 1))
    return bool(g) and _line_matches(w[0], g[0]) and _lines_match(w[1:], g[1:])


def test_output_matching_rules():
    table = "leaf  max |diff|  ok\n0:dense/b  2.6e-11  ok\nPASS, loss 1.99046"
    assert output_matches(table, "leaf  max |diff|  ok\n0:dense/b    7.1e-12  ok\nPASS, loss 1.99047")
    assert not output_matches(table, "leaf  max |diff|  ok\n0:dense/b  2.6e-11  FAIL\nPASS, loss 1.99046")
    assert not output_matches(table, "leaf  max |diff|  ok\n0:dense/b  2.6e-11  ok\nPASS, loss 2.5")
    assert not output_matches("0.5", "0.01")
    assert output_matches("first\n...\nlast", "first\na\nb\nlast")
    assert output_matches("shape (8, 10) and ...", "shape (8, 10) and more text")
    assert output_matches("b  (8,)  ...  1.1e-09  ok", "b  (8,)  0.11  2.2e-10  ok")
    assert not output_matches("b  (8,)  ...  1.1e-09  ok", "b  (8,)  0.11  2.2e-10  FAIL")
    assert not output_matches("a\nb", "a")


# ----------------------------------------------------------------------------- running

def _page_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _run_block(block: Block, namespace: dict):
    where = f"{_page_id(block.path)}:{block.line}"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(block.code, where, "exec"), namespace)
    if block.output is not None:
        assert output_matches(block.output, stdout.getvalue()), (
            f"{where} printed\n{stdout.getvalue()}\nbut the page shows\n{block.output}")


RUN_PAGES = [p for p in pages() if any(b.not_run is None for b in blocks(p))]


@pytest.mark.parametrize("path", RUN_PAGES, ids=_page_id)
def test_page_code_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files a page writes (checkpoints, runs/) land here
    namespace = {"__name__": "__docs__"}
    for block in blocks(path):
        if block.not_run is None:
            _run_block(block, namespace)


def counts():
    """{page: (blocks run, blocks not run)} over README.md and docs/."""
    result = {}
    for path in pages():
        bs = blocks(path)
        ran = sum(b.not_run is None for b in bs)
        if bs:
            result[_page_id(path)] = (ran, len(bs) - ran)
    return result


def test_few_blocks_are_not_run():
    not_run = [b for p in pages() for b in blocks(p) if b.not_run is not None]
    print(f"docs: {sum(r for r, _ in counts().values())} Python blocks run, {len(not_run)} not run")
    assert len(not_run) <= MAX_NOT_RUN, [f"{_page_id(b.path)}:{b.line}" for b in not_run]
    for b in not_run:
        assert len(b.not_run.split()) >= 3, f"{_page_id(b.path)}:{b.line}: say why it is not run"


def test_outputs_follow_a_block_that_runs():
    """An ```output block belongs to the Python block just above it, which must run."""
    for path in pages():
        found = list(_fenced(path.read_text(encoding="utf-8")))
        claimed = {b.line for b in blocks(path) if b.output is not None and b.not_run is None}
        for n, (line, lang, *_rest) in enumerate(found):
            if lang == "output":
                before = found[n - 1][0] if n else None
                assert before in claimed, f"{_page_id(path)}:{line}: an output no block is checked against"


# ----------------------------------------------------------------------------- API pages

API_MODULES = ("funcnet", "funcnet.train", "funcnet.data", "funcnet.checkpoint", "funcnet.models",
               "funcnet.distributed", "funcnet.sharding")
EXTRA_NAMES = {"funcnet.models": ("generate",)}  # public, re-exported, not in models.__all__


def public_names(module_name: str) -> List[str]:
    module = importlib.import_module(module_name)
    if module_name == "funcnet":  # the package's names are its re-exports, modules aside
        return [n for n in dir(module) if not n.startswith("_")
                and not isinstance(getattr(module, n), types.ModuleType)]
    return list(module.__all__) + list(EXTRA_NAMES.get(module_name, ()))


def _assignments():
    """{name: [(module, docstring or None)]} for every top-level assignment in funcnet/."""
    found = {}
    for path in sorted((ROOT / "funcnet").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        body = ast.parse(path.read_text(encoding="utf-8")).body
        for stmt, after in zip(body, body[1:] + [None]):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else \
                [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
            doc = after.value.value if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                                        and isinstance(after.value.value, str)) else None
            for t in targets:
                if isinstance(t, ast.Name):
                    found.setdefault(t.id, []).append((module, doc))
    return found


def _home(obj, name, assignments):
    """(defining module, docstring) of a public object."""
    if inspect.isclass(obj) or inspect.isfunction(obj):
        return obj.__module__, inspect.getdoc(obj)
    homes = assignments.get(name, [])
    documented = [h for h in homes if h[1]]
    return (documented or homes or [(None, None)])[0]


def _api_entries() -> set:
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((DOCS / "api").glob("*.md")))
    return set(re.findall(r"^:::\s*([\w.]+)", text, flags=re.M))


@pytest.mark.parametrize("module_name", API_MODULES)
def test_every_public_name_is_documented(module_name):
    module = importlib.import_module(module_name)
    assignments, entries = _assignments(), _api_entries()
    missing_doc, missing_entry = [], []
    for name in public_names(module_name):
        home, doc = _home(getattr(module, name), name, assignments)
        if not (doc and doc.strip()):
            missing_doc.append(name)
        if not {f"{module_name}.{name}", f"{home}.{name}"} & entries:
            missing_entry.append(name)
    assert not missing_doc, f"{module_name}: no docstring for {missing_doc}"
    assert not missing_entry, f"{module_name}: no `::: path` entry in docs/api/ for {missing_entry}"


def test_api_entries_name_real_objects():
    """Each `::: funcnet.x.y` on an API page imports (a renamed function fails here first)."""
    for entry in sorted(_api_entries()):
        parts = entry.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
            break


if __name__ == "__main__":  # python tests/test_docs.py: the blocks of each page
    sys.path.insert(0, str(ROOT))
    table = counts()
    for page, (ran, skipped) in table.items():
        print(f"{page:45s} {ran:3d} run {skipped:3d} not run")
    print(f"{'total':45s} {sum(r for r, _ in table.values()):3d} run "
          f"{sum(s for _, s in table.values()):3d} not run")
