"""The release gates. Each returns a list of problems (strings); an empty list means it passed.

Fast gates (no torch, well under a second): leaks, signatures, stability, notebook.
Slow gates (run pytest or the grader in a subprocess): reference_* and stubs_*.
"""

import ast
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from release import build
from release.markers import find_markers
from release.tex import find_tex_markers, is_generic_tex_line

# ---------------------------------------------------------------- c. leaks


def _normalize(line):
    return "".join(line.split())


def _text_lines(name, data):
    """(line number, text) of a shipped file; notebooks yield their cells' source lines."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return []
    if name.endswith(".ipynb"):
        try:
            cells = json.loads(text).get("cells", [])
        except (json.JSONDecodeError, AttributeError):
            return list(enumerate(text.splitlines(), start=1))
        out = []
        for k, cell in enumerate(cells):
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else source
            out += [(f"cell {k + 1} line {n}", s)
                    for n, s in enumerate(source.splitlines(), start=1)]
        return out
    return list(enumerate(text.splitlines(), start=1))


def solution_lines(built, manifest):
    """Normalized answer lines -> (source file, line, function), without the generic ones."""
    spec = manifest["leaks"]
    allowed = {_normalize(s) for s in spec["allow_shared"]}
    answers = {}
    for f in built.stripped:
        for region in f.result.regions:
            for number, line in region.lines:
                key = _normalize(line)
                if len(key) < spec["min_line_chars"] or key.startswith("#") or key in allowed:
                    continue
                if f.source.endswith(".tex") and is_generic_tex_line(line,
                                                                    spec["min_line_chars"]):
                    continue
                answers.setdefault(key, (f.source, number, region.function))
    return answers


def _where(name, data, number):
    """' (in <function>)' for a Python line, from the shipped file's own AST."""
    if not name.endswith(".py") or not isinstance(number, int):
        return ""
    try:
        tree = ast.parse(data.decode("utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return ""
    best = None
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.lineno <= number <= (node.end_lineno or node.lineno):
                if best is None or node.lineno > best.lineno:
                    best = node
    return f" (in {best.name})" if best else ""


def hidden_hashes(root, manifest):
    """sha256 -> repo path of every file whose content must not reach students."""
    root = Path(root)
    hashes = {}
    for folder in manifest["leaks"]["hidden_content"]:
        path = root / folder
        if not path.is_dir():
            continue
        for rel in build.files_under(path):
            if "__pycache__" in rel.split("/"):
                continue
            data = (path / rel).read_bytes()
            if data.strip():  # an empty __init__.py is no secret
                hashes.setdefault(build.sha256(data), f"{folder}/{rel}")
    return hashes


def check_leaks(root, manifest, built, student_entries):
    """Gate c: nothing of the answer, no marker, no hidden file in what students receive."""
    out_name = manifest["assignment"]["output"]
    shipped = [(f"{out_name}/{rel}", data) for rel, data in sorted(built.files.items())]
    shipped += [(f"student.zip:{e.name}", e.data) for e in student_entries]
    answers = solution_lines(built, manifest)
    hidden = hidden_hashes(root, manifest)
    # The staff files themselves (with their answers) are secret too.
    for f in built.stripped:
        if f.result.regions:
            hidden.setdefault(build.sha256(f.original.encode("utf-8")), f.source)
    forbidden = set(manifest["leaks"]["forbidden_dirs"])
    problems = []
    for name, data in shipped:
        inner = name.split(":", 1)[-1]
        parts = set(inner.split("/")[:-1])
        if parts & forbidden:
            problems.append(f"{name}: shipped from a forbidden folder "
                            f"({', '.join(sorted(parts & forbidden))}/)")
        origin = hidden.get(build.sha256(data))
        if origin:
            problems.append(f"{name}: has the same content as {origin}, which must not be shipped")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        for number, content in find_markers(text) + find_tex_markers(text):
            problems.append(f"{name}:{number}: solution marker left in shipped file: {content!r}")
        for number, line in _text_lines(inner, data):
            hit = answers.get(_normalize(line))
            if hit:
                source, src_line, function = hit
                problems.append(
                    f"{name}:{number}{_where(inner, data, number)}: line of the {function} "
                    f"solution ({source}:{src_line}) leaked: {line.strip()!r}. If it is truly "
                    "not part of the answer, add it to [leaks].allow_shared in "
                    "release/manifest.toml")
    return problems


# ---------------------------------------------------------------- d. signatures


def _doc(node):
    return ast.get_docstring(node, clean=False)


def _describe_def(node):
    if isinstance(node, ast.ClassDef):
        head = ("class", [ast.unparse(b) for b in node.bases],
                [ast.unparse(k) for k in node.keywords])
    else:
        head = (type(node).__name__, ast.unparse(node.args),
                ast.unparse(node.returns) if node.returns else None)
    return {"signature": head, "docstring": _doc(node),
            "decorators": [ast.unparse(d) for d in node.decorator_list]}


def _bound_names(body):
    """Names a block of statements binds (defs, classes, assignments, imports), recursively
    through if/try/with blocks but not into functions or classes."""
    names = set()
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        for attr in ("body", "orelse", "finalbody", "handlers"):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                sub = getattr(node, attr, None)
                if isinstance(sub, list):
                    names |= _bound_names(sub)
    return names


def public_api(source):
    """Module docstring, top-level names, and every module- and class-level def/class."""
    tree = ast.parse(source)
    api = {"<module docstring>": _doc(tree), "<module names>": sorted(_bound_names(tree.body))}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            api[node.name] = _describe_def(node)
        if isinstance(node, ast.ClassDef):
            api[f"{node.name} <class names>"] = sorted(_bound_names(node.body))
            for child in node.body:
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    api[f"{node.name}.{child.name}"] = _describe_def(child)
    return api


def check_signatures(built, manifest):
    """Gate d: the student's files expose exactly the staff files' API, docstrings included."""
    problems = []
    source_dir = manifest["assignment"]["source"]
    out_dir = manifest["assignment"]["output"]
    for f in built.stripped:
        if not f.source.endswith(".py"):
            continue  # the written part's LaTeX has no Python API
        rel = f.source[len(source_dir) + 1:]
        staff, student = public_api(f.original), public_api(f.result.text)
        for key in sorted(set(staff) | set(student)):
            if key not in student:
                problems.append(f"{out_dir}/{rel}: {key} is missing (it is in {f.source})")
            elif key not in staff:
                problems.append(f"{out_dir}/{rel}: {key} is not in {f.source}")
            elif staff[key] != student[key]:
                if isinstance(staff[key], dict):
                    what = [k for k in staff[key] if staff[key][k] != student[key][k]]
                else:
                    what = sorted(set(staff[key]) ^ set(student[key]))
                problems.append(f"{out_dir}/{rel}: {key} differs from {f.source} in "
                                f"{', '.join(map(str, what))}")
    return problems


# ---------------------------------------------------------------- e. stability


def snapshot(root, manifest, scratch):
    """Build everything once into folder `scratch`: {name: bytes} of the tree and both zips."""
    built = build.build_assignment(root, manifest)
    scratch = Path(scratch)
    out = {f"assignment/{rel}": data for rel, data in built.files.items()}
    student = scratch / "student.zip"
    build.write_zip(student, build.student_entries(root, manifest, built.files))
    out["student.zip"] = student.read_bytes()
    try:
        grader = scratch / "autograder.zip"
        build.write_zip(grader, build.autograder_entries(root, manifest))
        out["autograder.zip"] = grader.read_bytes()
    except build.ReleaseError:
        pass  # reported by its own step
    return out


def check_stable(root, manifest, first):
    """Gate e: a second build gives byte-identical files and zips."""
    with tempfile.TemporaryDirectory(prefix="release-stable-") as scratch:
        second = snapshot(root, manifest, scratch)
    problems = [f"{name}: differs between two builds" for name in sorted(set(first) | set(second))
                if first.get(name) != second.get(name)]
    return problems


# ---------------------------------------------------------------- notebook


def check_notebook(root, manifest):
    """The committed run_in_colab.ipynb is what release/colab_notebook.py builds today."""
    root = Path(root)
    module_path = root / "release" / "colab_notebook.py"
    committed = root / manifest["assignment"]["source"] / "run_in_colab.ipynb"
    if not module_path.is_file():
        return None  # nothing to compare with
    import importlib.util

    spec = importlib.util.spec_from_file_location("_release_colab_notebook", module_path)
    module = importlib.util.module_from_spec(spec)
    with tempfile.TemporaryDirectory(prefix="release-nb-") as tmp:
        fresh = Path(tmp) / "run_in_colab.ipynb"
        try:
            spec.loader.exec_module(module)
            module.build(fresh)
        except Exception as err:  # noqa: BLE001 - report any failure by name
            return [f"release/colab_notebook.py build() failed: {type(err).__name__}: {err}"]
        if not committed.is_file():
            return [f"{committed.relative_to(root)} is missing; run "
                    "`python -c \"from release.colab_notebook import build; "
                    "build('solutions/run_in_colab.ipynb')\"`"]
        if fresh.read_bytes() != committed.read_bytes():
            return [f"{committed.relative_to(root)} is stale: it differs from what "
                    "release/colab_notebook.py builds; rebuild it with `python -c \"from "
                    "release.colab_notebook import build; build('solutions/run_in_colab.ipynb')\"`"]
    return []


# ---------------------------------------------------------------- a. and b.: real runs


def _env():
    env = dict(os.environ)
    env.pop("DDPM_SUBMISSION", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(cmd, cwd, timeout=900):
    try:
        return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def _tail(text, head=10, tail=60):
    """The text indented, whole unless it is long: then its first `head` and last `tail` lines
    (the cause of a failure is usually at the end, and its last line is never cut)."""
    lines = text.strip().splitlines()
    if len(lines) > head + tail:
        lines = lines[:head] + [f"... ({len(lines) - head - tail} lines left out) ..."] + \
            lines[-tail:]
    return "\n".join("    " + s for s in lines)


def _junit_cases(path):
    """(name, outcome, message) per test case of a pytest junit report."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = f"{el.get('message', '')}\n{el.text or ''}"
                break
        cases.append((name, outcome, message))
    return cases


def run_public_tests(cwd, extra_args, scratch):
    """Run `pytest tests_public` in `cwd`; return (process or None, test cases)."""
    Path(scratch).mkdir(parents=True, exist_ok=True)
    report = Path(scratch) / "junit.xml"
    if report.exists():
        report.unlink()
    cmd = [sys.executable, "-m", "pytest", "tests_public", "-p", "no:cacheprovider", "-q",
           f"--junitxml={report}", "-o", "junit_family=xunit2", *extra_args]
    proc = _run(cmd, cwd)
    cases = _junit_cases(report) if report.is_file() else []
    return proc, cases


def check_reference_public(root, scratch):
    """Gate a (public): `pytest tests_public --submission solutions` passes in the repo."""
    if not (Path(root) / "tests_public").is_dir():
        return ["tests_public/ does not exist"]
    proc, cases = run_public_tests(root, ["--submission", "solutions"], scratch)
    if proc is None:
        return ["pytest tests_public --submission solutions timed out"]
    bad = [c for c in cases if c[1] in ("failed", "error")]
    if proc.returncode != 0 or bad or not cases:
        names = "".join(f"\n    {n}: {o}" for n, o, _ in bad[:10])
        return [f"pytest tests_public --submission solutions exited {proc.returncode} with "
                f"{len(cases)} tests, {len(bad)} failing on the reference:{names}\n"
                f"{_tail(proc.stdout + proc.stderr)}"]
    passed = sum(o == "passed" for _, o, _ in cases)
    return [], f"{passed}/{len(cases)} passed"


def check_stubs_public(kit, scratch):
    """Gate b (public): in the unzipped student kit, `pytest tests_public` collects every test,
    and every test fails with NotImplementedError / "not implemented" (no import errors)."""
    proc, cases = run_public_tests(kit, [], scratch)
    if proc is None:
        return ["pytest tests_public on the stubs timed out"]
    if proc.returncode not in (0, 1) or not cases:
        return [f"pytest tests_public in the student kit exited {proc.returncode} (collection "
                f"or usage error) with {len(cases)} tests:\n{_tail(proc.stdout + proc.stderr)}"]
    problems = []
    for name, outcome, message in cases:
        if outcome == "skipped":
            continue
        if outcome == "passed":
            problems.append(f"{name}: passes on the stubs (a test the student gets for free)")
        elif outcome == "error":
            problems.append(f"{name}: errors (not a test failure) on the stubs: "
                            f"{message.strip().splitlines()[0] if message.strip() else ''}")
        elif "NotImplementedError" not in message and "not implemented" not in message:
            first = message.strip().splitlines()[0] if message.strip() else "(no message)"
            problems.append(f"{name}: fails on the stubs without saying 'not implemented': "
                            f"{first}")
    if all(o == "skipped" for _, o, _ in cases):
        problems.append("every public test was skipped on the stubs")
    failed = sum(o == "failed" for _, o, _ in cases)
    skipped = sum(o == "skipped" for _, o, _ in cases)
    return problems, f"{failed}/{len(cases)} failed" + (f", {skipped} skipped" if skipped else "")


def grade(root, submission, scratch):
    """Run `python -m autograder grade SUBMISSION --out DIR`; return (results dict, problem)."""
    out = Path(scratch) / "grade"
    out.mkdir(parents=True, exist_ok=True)
    proc = _run([sys.executable, "-m", "autograder", "grade", str(submission), "--out", str(out)],
                root)
    if proc is None:
        return None, f"python -m autograder grade {submission} timed out"
    results = out / "results.json"
    if proc.returncode != 0 or not results.is_file():
        return None, (f"python -m autograder grade {submission} exited {proc.returncode} "
                      f"without results.json:\n{_tail(proc.stdout + proc.stderr)}")
    return json.loads(results.read_text()), None


def check_reference_grader(root, scratch):
    """Gate a (grader): the reference gets full marks on every graded test."""
    results, problem = grade(root, Path(root) / "solutions", scratch)
    if problem:
        return [problem]
    tests = results.get("tests", [])
    if not tests:
        return ["the grader ran no tests on solutions/"]
    lost = [t for t in tests if float(t.get("score", 0)) < float(t.get("max_score", 0))]
    total = sum(float(t.get("max_score", 0)) for t in tests)
    problems = [f"solutions/ loses points on {t.get('name')!r}: {t.get('score')}/"
                f"{t.get('max_score')}:\n{_tail(str(t.get('output', '')))}" for t in lost]
    if not problems and abs(float(results.get("score", total)) - total) > 1e-9:
        problems.append(f"solutions/ scores {results.get('score')} of {total}")
    return problems, f"{float(results.get('score', 0)):g}/{total:g} on {len(tests)} tests"


def check_stubs_grader(root, assignment, scratch):
    """Gate b (grader): the stubs score 0 on every graded test, and every test says "not
    implemented" (a zero for any other reason, e.g. a broken sandbox, is the grader's fault)."""
    results, problem = grade(root, assignment, scratch)
    if problem:
        return [problem]
    tests = [t for t in results.get("tests", []) if float(t.get("max_score", 0)) > 0]
    if not tests:
        return ["the grader ran no graded tests on the stubs"]
    problems = [f"the stubs score {t.get('score')}/{t.get('max_score')} on {t.get('name')!r}"
                for t in tests if float(t.get("score", 0)) != 0]
    if not problems and float(results.get("score", 0)) != 0:
        problems.append(f"the stubs score {results.get('score')} in total")
    silent = [t for t in tests if "not implemented" not in str(t.get("output", "")).lower()]
    problems += [f"on the stubs, {t.get('name')!r} does not say 'not implemented': "
                 f"{str(t.get('output', '')).strip()[:300]}" for t in silent]
    return problems, (f"{float(results.get('score', 0)):g} points on {len(tests)} graded tests; "
                      f"{len(tests) - len(silent)} say 'not implemented'")


def unzip(path, dest):
    with zipfile.ZipFile(path) as zf:
        zf.extractall(dest)
    return Path(dest)
