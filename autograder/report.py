"""Writes Gradescope's results.json and a readable report.md.

results.json follows https://gradescope-autograders.readthedocs.io/en/latest/specs/ : top-level
score, execution_time, output, output_format, visibility, tests[] (name, score, max_score,
status, output, visibility). `validate_results` checks exactly that shape.
"""

import json
import os
import tempfile
from pathlib import Path

VISIBILITIES = ("hidden", "after_due_date", "after_published", "visible")


def write_json_atomic(path, data):
    """Write JSON so a reader never sees half a file (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".results-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def fallback_results(rubric_tests, reason):
    """Zero score for every test: written first, replaced when grading completes."""
    tests = [{"name": t["name"], "score": 0.0, "max_score": float(t["points"]),
              "status": "failed", "output": reason, "visibility": t.get("visibility", "visible")}
             for t in rubric_tests]
    return {"score": 0.0, "execution_time": 0.0, "output": reason, "output_format": "text",
            "visibility": "visible", "stdout_visibility": "hidden", "tests": tests}


def validate_results(data):
    """Raise ValueError unless `data` is a valid Gradescope results.json object."""
    def need(cond, msg):
        if not cond:
            raise ValueError(msg)

    need(isinstance(data, dict), "results must be a JSON object")
    need(isinstance(data.get("tests"), list) or "score" in data, "needs tests[] or score")
    if "score" in data:
        need(isinstance(data["score"], (int, float)) and not isinstance(data["score"], bool),
             "score must be a number")
    if "execution_time" in data:
        need(isinstance(data["execution_time"], (int, float)), "execution_time must be a number")
    for key in ("output", "output_format"):
        if key in data:
            need(isinstance(data[key], str), f"{key} must be a string")
    if "visibility" in data:
        need(data["visibility"] in VISIBILITIES, "bad top-level visibility")
    allowed = {"name", "score", "max_score", "status", "output", "visibility", "tags", "number",
               "output_format", "name_format", "extra_data"}
    for i, t in enumerate(data.get("tests", [])):
        need(isinstance(t, dict), f"tests[{i}] must be an object")
        need(set(t) <= allowed, f"tests[{i}] has unknown keys {sorted(set(t) - allowed)}")
        need(isinstance(t.get("name"), str) and t["name"], f"tests[{i}].name must be a string")
        for key in ("score", "max_score"):
            if key in t:
                need(isinstance(t[key], (int, float)) and not isinstance(t[key], bool),
                     f"tests[{i}].{key} must be a number")
        if "status" in t:
            need(t["status"] in ("passed", "failed"), f"tests[{i}].status must be passed/failed")
        if "visibility" in t:
            need(t["visibility"] in VISIBILITIES, f"tests[{i}].visibility invalid")
        if "output" in t:
            need(isinstance(t["output"], str), f"tests[{i}].output must be a string")
    json.dumps(data)  # must serialize
    return True


def breakdown(tests):
    """{function: (score, max)} in first-appearance order, from the '<function>: ...' names."""
    out = {}
    for t in tests:
        fn = t["name"].split(":", 1)[0]
        got, total = out.get(fn, (0.0, 0.0))
        out[fn] = (got + t["score"], total + t["max_score"])
    return out


def fix_first(tests):
    """'<test name>: <first line of its output>' for the first failing visible test (the rubric
    follows the handout's order, so later functions build on it), or None. Hidden tests are
    never named here."""
    for t in tests:
        if t["status"] != "passed" and t.get("visibility", "visible") == "visible":
            first = next((s.strip() for s in t["output"].splitlines() if s.strip()), "")
            return f"{t['name']}: {first}" if first else t["name"]
    return None


def summary_output(parts, notes=()):
    """results.json's top-level output: the score of each part, the one thing to fix first,
    then the grader's notes. `parts` is [(title, tests)]."""
    lines = []
    for title, tests in parts:
        got = sum(t["score"] for t in tests)
        lines.append(f"{title}: {got:g} / {sum(t['max_score'] for t in tests):g}")
    tests = [t for _, part in parts for t in part]
    first = fix_first(tests)
    if first:
        lines.append(f"Fix first: {first}")
    elif any(t["status"] != "passed" for t in tests):
        lines.append("Some tests that are not shown yet fail.")
    else:
        lines.append("All tests passed.")
    return "\n".join(lines + [f"Note: {n}" for n in notes])


def submission_label(submission):
    """How reports name a submission: its file or folder name, never a local absolute path."""
    path = Path(submission)
    return path.name or str(submission)


def render_report(results, meta):
    """report.md: the total, a per-function table, then every failing test in words."""
    tests = results["tests"]
    total = sum(t["max_score"] for t in tests)
    lines = [f"# Autograder report: {submission_label(meta.get('submission', ''))}", "",
             f"**Score: {results['score']:g} / {total:g}**  "
             f"(graded in {results['execution_time']:.1f} s)", ""]
    first = fix_first(tests)
    if first:
        lines += [f"**Fix first:** {first}", ""]
    for note in meta.get("notes", []):
        lines.append(f"> {note}")
    if meta.get("notes"):
        lines.append("")
    # One table per graded part (their functions may share names), or one table.
    parts = list(meta.get("parts") or [("", tests)])
    covered = {t["name"] for _, chunk in parts for t in chunk}
    if any(t["name"] not in covered for t in tests):  # e.g. merged notebook tests
        parts.append(("Other tests", [t for t in tests if t["name"] not in covered]))
    for title, chunk in parts:
        if title and len(parts) > 1:
            got = sum(t["score"] for t in chunk)
            lines += [f"### {title}: {got:g} / {sum(t['max_score'] for t in chunk):g}", ""]
        lines += ["| function | score | max |", "|---|---:|---:|"]
        for fn, (got, mx) in breakdown(chunk).items():
            lines.append(f"| {fn} | {got:g} | {mx:g} |")
        lines.append("")
    lines.pop()
    failing = [t for t in tests if t["status"] != "passed"]
    lines += ["", f"## Failing tests ({len(failing)})" if failing else "## All tests passed", ""]
    for t in failing:
        lines += [f"### {t['name']}  ({t['score']:g}/{t['max_score']:g})", "", "```",
                  t["output"].rstrip(), "```", ""]
    if meta.get("student_output"):
        lines += ["## What your code printed (first lines)", "", "```",
                  meta["student_output"][:3000].rstrip(), "```", ""]
    return "\n".join(lines) + "\n"
