#!/usr/bin/env python3
"""The values table of docs/deploy.md, from the `# --` comments of
charts/netscope/values.yaml (helm-docs' convention).

  values_table.py            rewrite the table between the markers in docs/deploy.md
  values_table.py --check    exit 1 if the table there is not what values.yaml says
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VALUES = ROOT / "charts/netscope/values.yaml"
DOC = ROOT / "docs/deploy.md"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"


def table():
    stack, rows, pending = [], [], []
    for line in VALUES.read_text().splitlines():
        if not line.strip():
            pending = []
            continue
        m = re.match(r"^\s*# -- ?(.*)$", line)
        if m:
            pending = [m.group(1)]
            continue
        m = re.match(r"^\s*#\s?(.*)$", line)
        if m:
            if pending:
                pending.append(m.group(1).strip())
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_]+):\s*(.*)$", line)
        if not m:
            continue
        indent, key, val = len(m.group(1)), m.group(2), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if pending:
            path = ".".join([k for _, k in stack] + [key])
            rows.append((path, val or "(see values.yaml)", " ".join(pending)))
            pending = []
        stack.append((indent, key))
    out = ["| Key | Default | Description |", "| --- | --- | --- |"]
    for path, default, desc in rows:
        out.append(f"| `{path}` | `{default}` | {desc.replace('|', '&#124;')} |")
    return "\n".join(out)


def main():
    doc = DOC.read_text()
    if START not in doc or END not in doc:
        sys.exit(f"{DOC}: no {START} ... {END} markers")
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{table()}\n{END}{tail}"
    if "--check" in sys.argv:
        import yaml

        documented = {row.split("`")[1] for row in table().splitlines()[2:]}
        missing = []

        def walk(d, prefix=""):
            for k, v in d.items():
                path = prefix + k
                if path in documented:
                    continue
                if isinstance(v, dict) and v:
                    walk(v, path + ".")
                else:
                    missing.append(path)

        walk(yaml.safe_load(VALUES.read_text()))
        if missing:
            print(f"FAIL: values without a `# --` comment in values.yaml: {missing}", file=sys.stderr)
            return 1
        if new != doc:
            print(f"FAIL: the values table in {DOC.relative_to(ROOT)} is stale: run python3 scripts/values_table.py",
                  file=sys.stderr)
            return 1
        print(f"  values table in {DOC.relative_to(ROOT)} matches values.yaml")
        return 0
    DOC.write_text(new)
    print(f"wrote the values table into {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
