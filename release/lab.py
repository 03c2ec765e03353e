"""Notebooks authored in Otter's format: `otter assign` makes the student notebook, a gate checks it.

The master notebook (solutions/lab.ipynb, matched by [assignment].otter in manifest.toml) holds
the solutions, the public tests and the written answers in Otter's assign format. The release runs
`otter assign --no-pdfs --no-run-tests` (offline, a few seconds) in a temporary folder and ships
only the student notebook, normalized so that the same master always gives the same bytes: cell ids
are renumbered (Otter draws random ids for the cells it adds) and outputs are cleared. So the
staleness check and the "stable" gate compare bytes, with cell ids out of the picture. Otter's own
autograder zip is not built (`generate: false`): the notebook is graded by this repository's
engine (tests_hidden/lab/), not by Otter.

Gate `check_notebooks` (a list of problems, empty when it passes): the student notebook holds no
hidden test, no line of a solution region or written answer, no Otter marker, and defines every
graded function with the master's signature and docstring.
"""

import ast
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from release import build

# What a solution region looks like in the master notebook (Otter's syntax).
_BEGIN, _END = re.compile(r"#\s*BEGIN\s+SOLUTION"), re.compile(r"#\s*END\s+SOLUTION")
_MARKERS = re.compile(r"#\s*(BEGIN|END)\s+(SOLUTION|QUESTION|TESTS|PROMPT|TEST CONFIG)|"
                      r"#\s*SOLUTION\b|#\s*ASSIGNMENT CONFIG|#\s*(BEGIN|END) IGNORE|#\s*IGNORE\b")
MIN_LINE_CHARS = 12  # shorter solution lines ("return x") are too generic to call a leak


class NotebookBuildError(build.ReleaseError):
    """`otter assign` failed or produced something we do not ship."""


def _source(cell):
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def normalize(nb):
    """The student notebook as we ship it: stable ids, no outputs, fixed JSON layout."""
    for i, cell in enumerate(nb["cells"]):
        cell["id"] = f"cell-{i:03d}"
        cell["source"] = _source(cell)
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return (json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def assign(master):
    """bytes of the student notebook `otter assign` makes from the master notebook `master`."""
    master = Path(master)
    with tempfile.TemporaryDirectory(prefix="otter-assign-") as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "otter", "assign", "--no-pdfs", "--no-run-tests",
               str(master), str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise NotebookBuildError(f"otter assign {master.name} did not finish in 600 s") from None
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:])
            raise NotebookBuildError(f"otter assign {master.name} failed:\n{tail}")
        student = out / "student"
        extra = sorted(str(p.relative_to(student)) for p in student.rglob("*")
                       if p.is_file() and p.name != master.name)
        if extra:
            raise NotebookBuildError(f"otter assign {master.name} wrote files we do not ship: "
                                     f"{extra} (keep tests in the notebook: tests.files: false)")
        return normalize(json.loads((student / master.name).read_text()))


# ---------------------------------------------------------------- the gate

def _solution_lines(master):
    """Lines of the master's solution regions: code between BEGIN/END SOLUTION comments, lines
    marked # SOLUTION, and every cell between raw BEGIN/END SOLUTION cells (written answers)."""
    lines, in_block = [], False
    for cell in master["cells"]:
        src = _source(cell)
        if cell.get("cell_type") == "raw":
            if _BEGIN.match(src.strip()):
                in_block = True
            elif _END.match(src.strip()):
                in_block = False
            continue
        inside = False
        for line in src.splitlines():
            if _BEGIN.search(line):
                inside = True
            elif _END.search(line):
                inside = False
            elif (inside or re.search(r"#\s*SOLUTION\s*$", line)
                  or (in_block and cell.get("cell_type") == "markdown")):
                lines.append(line)
    return lines


def _defs(nb):
    """{name: (args, docstring)} of the top-level functions in the code cells."""
    out = {}
    for cell in nb["cells"]:
        if cell.get("cell_type") != "code":
            continue
        try:
            tree = ast.parse(_source(cell))
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out[node.name] = (ast.unparse(node.args), ast.get_docstring(node))
    return out


def check_notebook(master_bytes, student_bytes, name="lab.ipynb"):
    """Problems with a student notebook made from a master notebook (empty list: fine)."""
    master, student = json.loads(master_bytes), json.loads(student_bytes)
    problems = []
    tests = student.get("metadata", {}).get("otter", {}).get("tests", {})
    for q, text in tests.items():
        if re.search(r"hidden\s*=\s*True", str(text)):
            problems.append(f"{name}: the tests of {q} in the notebook's metadata include a "
                            "hidden test (mark every test in the master `hidden: false`; hidden "
                            "tests live in tests_hidden/)")
    shipped = "\n".join(_source(c) for c in student["cells"]) + "\n" + json.dumps(tests)
    flat = "".join(shipped.split())
    for line in dict.fromkeys(_solution_lines(master)):
        key = "".join(line.split())
        if len(key) >= MIN_LINE_CHARS and key in flat:
            problems.append(f"{name}: a solution line reaches students: {line.strip()!r}")
    for k, cell in enumerate(student["cells"]):
        for line in _source(cell).splitlines():
            if _MARKERS.search(line):
                problems.append(f"{name}: cell {k} still holds an Otter marker: {line.strip()!r}")
    want, got = _defs(master), _defs(student)
    for fn, (args, doc) in want.items():
        if fn.startswith("test_"):
            continue  # public tests live in the metadata, not in cells
        if fn not in got:
            problems.append(f"{name}: {fn} is not defined in the student notebook")
        elif got[fn] != (args, doc):
            problems.append(f"{name}: {fn} has another signature or docstring than in the master")
    return problems


def check_notebooks(root, manifest, built):
    """The release gate over every notebook matched by [assignment].otter."""
    spec = manifest["assignment"]
    problems = []
    for rel in built.notebooks:
        master = (Path(root) / spec["source"] / rel).read_bytes()
        problems += check_notebook(master, built.files[rel], rel)
    return problems
