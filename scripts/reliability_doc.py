"""Write docs/reliability.md from tests/test_bad_inputs.py: every bad-input case the tests provoke, by section.

    .venv/bin/python scripts/reliability_doc.py

A case is a ``case_<name>`` function of the test module; its section is the ``# ---- <section>`` comment above it,
its description the first line of its docstring (else its name). The page is generated, so its count and its list
are the tests' own.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests" / "test_bad_inputs.py"
OUT = ROOT / "docs" / "reliability.md"

INTRO = """# Reliability: what a mistake gets

Every bad input ends in one error that names the file (and row or entry) at fault and the fix — `ManifestError`,
`InputError` or `HistoryError`, exit code 2 from the CLI, never a traceback — or, for a metric that cannot be
computed, a row recorded as *not computed* with the reason. What a failure leaves: a run that fails — at start, while
training or while sampling — has `status.json` saying failed and why (trained weights and earlier checkpoints kept);
nothing is half-written (every file is written to a temporary name and renamed); checkpoints hold no pickle. A study
survives a broken dataset: every dataset is checked before the grid, its cells fail with the cause, and the study's
later stages leave it out.

This page is generated from `tests/test_bad_inputs.py` by `scripts/reliability_doc.py`: each row is a case the
tests provoke and check.
"""


def cases() -> list[tuple[str, str, str]]:
    source = TESTS.read_text()
    tree = ast.parse(source)
    lines = source.splitlines()
    sections = [(i + 1, m.group(1).strip()) for i, line in enumerate(lines)
                if (m := re.match(r"^# -{20,} (.+)$", line))]
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("case_"):
            section = next((name for line, name in reversed(sections) if line < node.lineno), "other")
            doc = ast.get_docstring(node)
            text = doc.splitlines()[0] if doc else node.name[5:].replace("_", " ")
            out.append((section, node.name[5:], text))
    return out


def main() -> None:
    rows = cases()
    parts = [INTRO, f"**{len(rows)} cases.**\n"]
    for section in dict.fromkeys(s for s, _, _ in rows):
        mine = [(n, t) for s, n, t in rows if s == section]
        parts.append(f"## {section} ({len(mine)})\n\n| case | what is provoked |\n| --- | --- |")
        parts += [f"| `{name}` | {text} |" for name, text in mine]
        parts.append("")
    OUT.write_text("\n".join(parts))


if __name__ == "__main__":
    main()
