"""The README is a map (issue 29): short enough to read in one sitting, and every place it and the
docs/ pages point to exists, so a moved file or page cannot leave a newcomer at a dead end."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)")  # relative links; http(s): links have a ':'
REPO_PATH = re.compile(
    r"`((?:dags|components|serving|monitoring|moodloop|data|tests|bench|scripts|docker|docs)/[\w/.-]+\.\w+)`"
)


def test_the_readme_is_a_map_not_a_wall():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move details to a docs/ page"
    assert "make run" in lines[lines.index("## Two commands") + 3]


def test_every_link_and_path_in_the_docs_exists():
    dead = []
    for page in PAGES:
        text = page.read_text()
        dead += [f"{page.name}: link {target}" for target in LINK.findall(text) if not (page.parent / target).exists()]
        dead += [f"{page.name}: path {path}" for path in REPO_PATH.findall(text) if not (REPO / path).exists()]
    assert len(PAGES) > 5 and not dead, dead


def test_every_docs_page_is_reachable_from_the_readme():
    readme = (REPO / "README.md").read_text()
    unlinked = [page.name for page in PAGES[1:] if f"docs/{page.name}" not in readme]
    assert not unlinked, f"docs pages no README link leads to: {unlinked}"


def test_the_settings_reference_is_made_from_the_settings_and_current():
    """docs/settings.md's table is generated from moodloop/core/settings.py: every MOODLOOP_* field with
    its default and a meaning (its comment); a setting added without one, or a stale table, fails."""
    from moodloop.core.settings_reference import current_doc_section, entries, markdown

    rows = entries()
    assert len(rows) == len({row.variable for row in rows}) > 50  # each variable once
    assert not [row.variable for row in rows if not row.meaning], "settings without a comment saying what they mean"
    assert current_doc_section() == markdown(), "run: python -m moodloop.core.settings_reference --write"
