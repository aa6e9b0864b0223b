"""The user documentation holds together: every section citation resolves, every link has a target.

(a) Code, config, report captions, README and docs cite method sections as "§3.7", written
    "docs/methods.md §3.7" (or, in older text, "METHODS.md §3.7"); each cited number must be the
    number of a heading of docs/methods.md. Headings there start with their number:
    "## 3 Label words as anchors", "### 3.7 Anchor-only context compression".
    A range "§4.3–4.4" cites both ends.
(b) Every relative link of README.md, data/README.md and docs/*.md points to an existing file, and
    a link to a section ("outputs.md#activation-files") to an existing heading of that file.
(c) The docs are self-contained: they name no internal design notes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
METHODS = DOCS / "methods.md"

NUMBER = r"\d+(?:\.\d+)*"
# "§3.7", "§ 3.7", "METHODS.md §3.7", "docs/methods.md §3.7", "§4.3–4.4", "§2.4-2.5"
CITATION = re.compile(rf"(?:(?:docs/methods|METHODS)\.md\s*)?§\s?({NUMBER})(?:\s?[–-]\s?({NUMBER}))?")
HEADING = re.compile(rf"^#{{1,6}}\s+({NUMBER})\s+\S")
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]\n]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def citing_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "config.yaml"]
    for pattern in ("*.py", "*.smk", "*.rst", "*.yaml", "*.yml"):
        files += (REPO / "workflow").rglob(pattern)
    files += (REPO / "config").rglob("*.yaml")
    files += DOCS.glob("*.md")
    return sorted({f for f in files if f.is_file()})


def methods_sections() -> list[str]:
    numbers = []
    in_fence = False
    for line in METHODS.read_text(encoding="utf-8").splitlines():
        if line.startswith(("```", "~~~")):
            in_fence = not in_fence
        elif not in_fence and (m := HEADING.match(line)):
            numbers.append(m.group(1))
    return numbers


def citations() -> list[tuple[str, int, str]]:
    """(file relative to the repository, line, cited section number) of every citation."""
    found = []
    for path in citing_files():
        for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for m in CITATION.finditer(line):
                for number in filter(None, m.groups()):
                    found.append((str(path.relative_to(REPO)), lineno, number))
    return found


def test_methods_headings_are_numbered_once_each():
    numbers = methods_sections()
    assert numbers, f"{METHODS} has no numbered headings ('### 3.7 Title')"
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    assert not duplicates, f"section numbers used by more than one heading of docs/methods.md: {duplicates}"


def test_citation_pattern_reads_old_and_new_forms():
    text = "see METHODS.md §3.7, docs/methods.md §1.4, (§3.3/§3.8), §4.3–4.4 and § 2"
    numbers = [n for m in CITATION.finditer(text) for n in m.groups() if n]
    assert numbers == ["3.7", "1.4", "3.3", "3.8", "4.3", "4.4", "2"]


def test_every_section_citation_resolves_to_a_heading_of_methods_md():
    sections = set(methods_sections())
    found = citations()
    assert found, "no '§' citations found: has the citation form changed?"
    dangling = [f"{f}:{line}: §{n}" for f, line, n in found if n not in sections]
    assert not dangling, "citations with no heading in docs/methods.md:\n" + "\n".join(dangling)


def markdown_files() -> list[Path]:
    return [REPO / "README.md", REPO / "data" / "README.md", *sorted(DOCS.glob("*.md"))]


def relative_links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    targets = [a or b for a, b in LINK.findall(text)]
    return [t for t in targets if not re.match(r"^([a-z][a-z0-9+.-]*:|#)", t, re.I)]


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings: lower case, punctuation dropped, spaces to '-'."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    titles = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-") for title in titles}


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_existing_files(path):
    assert path.is_file(), f"{path.relative_to(REPO)} is missing"
    missing = [t for t in relative_links(path) if not (path.parent / t.split("#", 1)[0]).exists()]
    assert not missing, f"{path.relative_to(REPO)} links to files that do not exist: {missing}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_links_to_a_section_name_an_existing_heading(path):
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    wrong = []
    for target in (a or b for a, b in LINK.findall(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or "#" not in target:
            continue
        file, anchor = target.split("#", 1)
        linked = (path.parent / file) if file else path
        if linked.suffix == ".md" and linked.is_file() and anchor not in heading_anchors(linked):
            wrong.append(target)
    assert not wrong, f"{path.relative_to(REPO)} links to sections that do not exist: {wrong}"


def test_link_pattern_finds_relative_targets(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "[a](docs/x.md) [b](https://example.org) [c](#top) ![d](fig.png) `[e](no.md)`\n"
        '```\n[f](fenced.md)\n```\n[g](y.md#part "title")\n'
    )
    assert relative_links(page) == ["docs/x.md", "fig.png", "y.md#part"]


@pytest.mark.parametrize(
    "path", sorted(DOCS.glob("*.md")) + [REPO / "data" / "README.md"], ids=lambda p: str(p.relative_to(REPO))
)
def test_docs_name_no_internal_notes(path):
    text = path.read_text(encoding="utf-8")
    for name in ("METHODS.md", "DESIGN.md", "/work/shared"):
        assert name not in text, f"{path.relative_to(REPO)} mentions {name}; the docs must stand on their own"


def test_architecture_table_is_generated_from_the_support_table():
    from iclscope.core.architectures import markdown_table

    assert markdown_table() in (DOCS / "architectures.md").read_text(), (
        "docs/architectures.md is stale: regenerate its table with tests/architecture_table.py"
    )


def test_the_version_is_written_once_and_has_a_changelog_entry():
    import iclscope

    assert 'dynamic = ["version"]' in (REPO / "pyproject.toml").read_text()
    assert "iclscope.__version__" in (REPO / "pyproject.toml").read_text()
    first = next(line for line in (REPO / "CHANGELOG.md").read_text().splitlines() if line.startswith("## "))
    assert first.startswith(f"## {iclscope.__version__} "), first


def test_readme_is_short_and_states_one_cost():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 100
    assert "make run" in text and "make test" in text and "about 20 minutes" in text
