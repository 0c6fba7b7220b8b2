"""The documentation: generated pages are current, every page is in the navigation, the README is a
short guide, and no commit hash or date sits in the prose or the code (history is CHANGELOG.md's)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["cli.md", "benchmarks.md"])
def test_generated_pages_are_current(page):
    """docs/cli.md is every verb's --help; docs/benchmarks.md the files of benchmarks/results/."""
    generator = _generator()
    expected = getattr(generator, generator.PAGES[page])() + "\n"
    assert (DOCS / page).read_text() == expected, f"docs/{page} is stale: run python scripts/gen_docs.py"


def test_the_cli_page_shows_each_verbs_help():
    from knet.cli import VERBS

    text = (DOCS / "cli.md").read_text()
    for verb in VERBS:
        assert f"## knet {verb}\n" in text and f"usage: knet {verb} " in text


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert pages and all(f": {page}" in nav for page in pages), [page for page in pages if f": {page}" not in nav]


def test_the_readme_is_a_short_guide():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250 and len(text.encode()) <= 16 * 1024
    for page in re.findall(r"\(docs/([\w-]+\.md)\)", text):
        assert (DOCS / page).is_file(), page


HASH_OR_DATE = re.compile(r"\b[0-9a-f]{7,40}\b|20[0-9]{2}-[0-9]{2}-[0-9]{2}")


def test_no_commit_hash_or_date_in_the_guide_or_the_code():
    files = [ROOT / "README.md", *DOCS.glob("*.md"), *(ROOT / "src").rglob("*.py")]
    found = [f"{path.relative_to(ROOT)}: {match.group(0)}" for path in files
             for match in HASH_OR_DATE.finditer(path.read_text())]
    assert not found, found
