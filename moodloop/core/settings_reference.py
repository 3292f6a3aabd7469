"""The settings reference, made from moodloop/core/settings.py itself: every MOODLOOP_* variable with its
section, default and meaning (the comment beside the field, and the comment block right above it).
A new setting documents itself where it is declared; docs/settings.md holds the table between its
markers, and tests/code/test_docs.py fails when it is not current.

  python -m moodloop.core.settings_reference            print the reference (Markdown)
  python -m moodloop.core.settings_reference --write    rewrite it in docs/settings.md
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import sys
import tokenize
from pathlib import Path

from moodloop.core import settings as settings_module
from moodloop.core.settings import REPO_ROOT, SECTIONS, Settings

DOC = REPO_ROOT / "docs" / "settings.md"
BEGIN = "<!-- settings reference: made by python -m moodloop.core.settings_reference --write -->"
END = "<!-- end of the settings reference -->"


@dataclasses.dataclass(frozen=True)
class Entry:
    section: str  # "" for the top level
    field: str
    variable: str
    default: str
    meaning: str


def _comments(source: str) -> dict[int, str]:
    """{line number: comment text} of every comment in `source`."""
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = token.string.lstrip("#").strip()
    return found


def _default(field: dataclasses.Field) -> str:
    if "under_home" in field.metadata:
        return f"<home>/{field.metadata['under_home']}"
    value = field.default
    if value == Path():
        return "(derived)"  # from other settings: the meaning says how
    if isinstance(value, Path):
        return f"<repo>/{value.relative_to(REPO_ROOT)}" if value.is_relative_to(REPO_ROOT) else str(value)
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "(none)"
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if value == "" else str(value)


def entries() -> list[Entry]:
    source = inspect.getsource(settings_module)
    lines = source.splitlines()
    comments = _comments(source)
    classes = {node.name: node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ClassDef)}
    found = []
    for section, cls in [("", Settings), *SECTIONS.items()]:
        fields = {f.name: f for f in dataclasses.fields(cls) if "env" in f.metadata}
        for node in classes[cls.__name__].body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            field = fields.get(node.target.id)
            if field is None:
                continue
            above, line = [], node.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):
                above.insert(0, comments[line])
                line -= 1
            beside = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
            meaning = " ".join(part for part in (*above, *beside) if part)
            found.append(Entry(section, field.name, field.metadata["env"], _default(field), meaning))
    return found


def markdown() -> str:
    out = [BEGIN, ""]
    rows = entries()
    for section in ["", *SECTIONS]:
        title = f"`settings.{section}`" if section else "top level (`settings.*`: where things live)"
        out += [f"### {title}", "", "| variable | field | default | meaning |", "|---|---|---|---|"]
        for entry in (e for e in rows if e.section == section):
            meaning = entry.meaning.replace("|", "\\|")
            default = entry.default.replace("|", "\\|")
            out.append(f"| `{entry.variable}` | `{entry.field}` | `{default}` | {meaning} |")
        out.append("")
    out.append(END)
    return "\n".join(out) + "\n"


def current_doc_section() -> str:
    text = DOC.read_text()
    return text[text.index(BEGIN) : text.index(END) + len(END)] + "\n"


def write() -> None:
    text = DOC.read_text()
    DOC.write_text(text[: text.index(BEGIN)] + markdown() + text[text.index(END) + len(END) + 1 :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moodloop.core.settings_reference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--write", action="store_true", help=f"rewrite the reference in {DOC.relative_to(REPO_ROOT)}")
    args = parser.parse_args(argv)
    if args.write:
        write()
        print(f"{len(entries())} settings written to {DOC}")
    else:
        sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
