"""Grade one submission: stage it in the sandbox, run the hidden tests, write the results.

Python API (for tests that grade many submissions in one process):

    from autograder.grade import grade_submission
    from autograder.runtime.sandbox import Sandbox, Limits

    with Sandbox(hide=default_hide()) as sandbox:          # optional: reuse one zygote
        results = grade_submission("path/to/diffusion.py",  # or a folder holding one
                                   out_dir=None,            # or a folder: results.json, report.md
                                   sandbox=sandbox,         # None: a private sandbox
                                   limits=None,             # Limits(timeout_s=...) for a new one
                                   budget_s=240.0)          # hard cap on the whole grading
    results["score"], results["tests"]                      # Gradescope results.json as a dict

`grade_submission` never raises for anything the submission does; it returns (and writes) a
valid results dict in every case. With out_dir, a zero-score results.json is written first.
When the grader cannot grade here (the worker does not start or cannot compute, the memory
limit leaves too little), it raises GraderEnvironmentError and leaves no results.json: an
environment fault is never a student's zero.

Time: a function whose probe timed out is not called again (its later tests fail at once with
"timed out earlier"); after the first timeout, probes get at most what is left of
Limits.hang_pool_s (never under Limits.after_hangs_timeout_s): a submission that hangs
everywhere is graded in about a minute.
"""

import importlib
import importlib.util
import json
import re
import sys
import time

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (setup.sh installs tomli)
    import tomli as tomllib
from pathlib import Path

import torch

from . import checks, notebook, report
from .config import DEFAULT_BUDGET_S, GRADED_MODULES, ROOT
from .runtime.sandbox import GraderEnvironmentError, Limits, ProbeResult, Sandbox


def load_rubric(module):
    """The rubric's tests, in order: [{id, name, points, visibility}]."""
    with open(ROOT / module.rubric_path, "rb") as f:
        tests = tomllib.load(f)["test"]
    for t in tests:
        if not re.match(r"^[A-Za-z0-9_.]+: ", t["name"]):  # digits: "q1.compute_mean: ..."
            raise ValueError(f"rubric test {t['id']!r}: name must be '<function>: <behaviour>'")
    return tests


def _load_path(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


_CACHE = {}


def load_tests(module):
    """The part's TESTS {id: fn(ctx) -> Verdict}, from tests_hidden/<name>/tests.py."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"tests_hidden.{module.name}.tests").TESTS


def load_reference(module):
    key = ("reference", module.reference)
    if key not in _CACHE:
        name = "autograder_reference_" + Path(module.reference).stem
        if module.reference.endswith(".ipynb"):  # the staff notebook, reduced like a submission
            source, _ = notebook.notebook_to_module((ROOT / module.reference).read_bytes())
            mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, None))
            exec(compile(source, str(ROOT / module.reference), "exec"), mod.__dict__)
            sys.modules[name] = _CACHE[key] = mod
        else:
            _CACHE[key] = _load_path(ROOT / module.reference, name)
    return _CACHE[key]


def default_hide(out_dir=None, submission=None):
    """Paths the worker must not see: every entry of the grader's tree (except the Python
    environment, which the Sandbox keeps), the output folder and the original submission."""
    hide = [p for p in ROOT.iterdir()]
    for extra in (out_dir, submission):
        if extra is not None:
            p = Path(extra).resolve()
            hide.append(p if p.is_dir() else p.parent)
    return hide


def _name_pattern(filename):
    """Renamed copies of `filename` such as 'diffusion (1).py' or 'diffusion-2.py'."""
    stem, suffix = Path(filename).stem, Path(filename).suffix
    return re.compile(rf"^{re.escape(stem)}[\s_\-()0-9]*{re.escape(suffix)}$", re.IGNORECASE)


def lone_file_part(path, filenames):
    """The submission file name a single uploaded file stands for, among those of its kind
    (suffix): the one its name matches (e.g. 'binary_diffusion (1).py'), else the first of that
    kind (a .py of any other name is part 1's); None if no part takes that kind."""
    same_kind = [f for f in filenames if Path(f).suffix.lower() == Path(path).suffix.lower()]
    for filename in same_kind:
        if _name_pattern(filename).match(Path(path).name):
            return filename
    return same_kind[0] if same_kind else None


def find_submission(path, filename, owner=None):
    """(file, note): the submitted `filename` in `path` (a file or a folder). Accepts renamed
    copies such as 'diffusion (1).py' or 'diffusion-2.py', with a note. A single file stands for
    one part only, `owner` (default: this one)."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() != Path(filename).suffix.lower():
            return None, ""  # one file of another kind (a .py for the notebook): not this part
        if owner is not None and owner != filename:
            return None, f"no {filename} in the submission (only {path.name}, graded as {owner})"
        note = "" if path.name == filename else f"graded {path.name} as {filename}"
        return path, note
    if not path.is_dir():
        return None, f"{path} does not exist"
    exact = path / filename
    if exact.is_file():
        return exact, ""
    pattern = _name_pattern(filename)
    candidates = sorted(p for p in path.rglob("*" + Path(filename).suffix) if pattern.match(p.name)
                        and ".ipynb_checkpoints" not in p.parts)
    if candidates:
        return candidates[0], f"no {filename} found; graded {candidates[0].name} instead"
    return None, f"no {filename} in the submission"


class Context:
    """What a hidden test sees: probes (memoized per submission), the reference module, and a
    cache for the part's own reference objects. It knows no part."""

    def __init__(self, sandbox, reference, deadline, cuda):
        self.sandbox, self.reference, self.deadline, self.cuda = sandbox, reference, deadline, cuda
        self._probes, self._verdicts = {}, {}
        self.cache = {}
        self.outputs = []
        self.tests = {}
        self.timeouts = 0  # probes stopped by their time limit or the grading budget
        self.names = {}          # test id -> rubric name ("<function>: <behaviour>")
        self.timed_out = {}      # function -> the name of the test in which it timed out
        self.hang_spent = 0.0    # seconds spent in probes that timed out
        self._stack = []         # the tests being computed (ctx.verdict nests)

    @property
    def function(self):
        """The function whose test is being computed (the rubric name's prefix)."""
        if not self._stack:
            return ""
        return self.names.get(self._stack[-1], self._stack[-1]).split(":", 1)[0]

    def verdict(self, test_id):
        """The verdict of another test (computed once), for tests that build on it."""
        if test_id not in self._verdicts:
            self._stack.append(test_id)
            try:
                earlier = self.timed_out.get(self.function)
                if earlier is not None:
                    self._verdicts[test_id] = checks.Verdict.fail(
                        f"{self.function}: timed out earlier (in \"{earlier}\"); not called again")
                else:
                    self._verdicts[test_id] = self.tests[test_id](self)
            except Exception as exc:  # malformed outputs from the submission land here
                self._verdicts[test_id] = checks.Verdict.fail(
                    f"the returned values could not be checked ({type(exc).__name__}: {exc})")
            finally:
                self._stack.pop()
        return self._verdicts[test_id]

    def probe(self, kind, cfg=None, arrays=None, *, key="", noise_seed=0, seed=0, timeout_s=None):
        """Run (once per submission) probe `kind` in the sandbox; `key` names the inputs."""
        function = self.function
        if function in self.timed_out:
            return ProbeResult(False, status="skipped",
                               error=f"timed out earlier (in \"{self.timed_out[function]}\")")
        cache_key = (kind, json.dumps(cfg, sort_keys=True), key, noise_seed, seed)
        if cache_key not in self._probes:
            limits = self.sandbox.limits
            remaining = self.deadline - time.monotonic()
            timeout = timeout_s or limits.timeout_s
            if self.hang_spent:  # something hangs: what is left of the pool, or the floor
                timeout = min(timeout, max(limits.hang_pool_s - self.hang_spent,
                                           limits.after_hangs_timeout_s))
            if remaining <= 1:
                result = ProbeResult(False, status="timeout",
                                     error="the grading time budget was exhausted")
            else:
                header = {"probe": kind, "cfg": cfg or {}, "noise_seed": noise_seed, "seed": seed}
                result = self.sandbox.probe(header, {k: _np(v) for k, v in (arrays or {}).items()},
                                            timeout_s=min(timeout, remaining))
                if result.status == "timeout":
                    self.hang_spent += result.seconds
            if result.output:
                self.outputs.append(result.output)
            if result.status == "timeout":
                self.timeouts += 1
            self._probes[cache_key] = result
        result = self._probes[cache_key]
        if result.status == "timeout" and function and function not in self.timed_out:
            self.timed_out[function] = self.names.get(self._stack[-1], function)
        return result

    def failed(self, result, what):
        """The verdict for a probe that did not return (error, timeout, memory, crash)."""
        if result.not_implemented:
            return checks.Verdict.fail(f"{what}: not implemented ({result.error})")
        function = self.function or what.split(" ")[0]
        if result.status == "memory":
            detail = result.error.split("): ", 1)[-1]
            # Where it happened, when the traceback names a graded function (a test of
            # `training` that runs out in the student's `forward` names `forward`).
            # (the worker's `where` ends "line N, in fn" or "line N, in fn: <source line>")
            where = re.search(r", line \d+, in (\w+)(?:\)$|: )", result.error)
            functions = {name.split(":", 1)[0] for name in self.names.values()}
            named = [f for f in functions if where and f.split(".")[-1] == where.group(1)]
            return checks.Verdict.fail(f"{what}: ran out of memory in `{(named or [function])[0]}`"
                                       f" (limit {result.memory_limit_mb} MB; {detail})")
        if result.status == "skipped":
            return checks.Verdict.fail(f"{what}: {result.error}; `{function}` is not called again")
        prefix = {"timeout": "timed out", "crashed": "crashed"}.get(result.status, "raised an error")
        return checks.Verdict.fail(f"{what}: {prefix}: {result.error}")


def _np(v):
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().contiguous().numpy()
    return v


def grade_submission(submission, out_dir=None, *, sandbox=None, limits=None,
                     budget_s=DEFAULT_BUDGET_S, modules=GRADED_MODULES, cuda=None,
                     details=None):
    """Grade `submission` (a file or a folder); returns the results.json dict. See module doc.

    details: an optional dict, filled with what a gradebook needs beyond results.json:
    "flags", a list of (kind, text) with kind in renamed, missing, import_error, timeout,
    grading_error.
    """
    start = time.monotonic()
    rubrics = [(m, load_rubric(m)) for m in modules]
    all_rubric = [t for _, r in rubrics for t in r]
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report.write_json_atomic(out / "results.json", report.fallback_results(
            all_rubric, "Grading did not complete (the grader stopped early); score 0."))
    cuda = torch.cuda.is_available() if cuda is None else cuda
    notes, tests, student_output = [], [], []
    flags = []  # (kind, text) for the gradebook
    own = sandbox is None
    try:
        if own:
            sandbox = Sandbox(hide=default_hide(out, submission), limits=limits or Limits())
        sandbox.check()  # can we grade here at all? (GraderEnvironmentError if not)
        deadline = time.monotonic() + budget_s  # the submission's time starts now
        owner = (lone_file_part(submission, [m.submission_file for m in modules])
                 if Path(submission).is_file() else None)
        for module, rubric in rubrics:
            tests += _grade_module(module, rubric, submission, sandbox, deadline, cuda,
                                   notes, student_output, flags, owner)
        notes += sandbox.notes
    except GraderEnvironmentError:
        if out is not None:  # no zero may stand for a grading that could not happen
            (out / "results.json").unlink(missing_ok=True)
        raise
    except Exception as exc:  # a grader failure still yields a valid zero-score result
        notes.append(f"grading error: {type(exc).__name__}: {exc}")
        flags.append(("grading_error", f"{type(exc).__name__}: {exc}"))
        done = {t["name"] for t in tests}
        tests += [_test(t, False, f"not graded: {type(exc).__name__}: {exc}")
                  for t in all_rubric if t["name"] not in done]
    finally:
        if own and sandbox is not None:
            sandbox.close()
    parts = [(m.title, [t for t in tests if t["name"] in {r["name"] for r in rubric}])
             for m, rubric in rubrics]
    results = {
        "score": round(sum(t["score"] for t in tests), 4),
        "execution_time": round(time.monotonic() - start, 2),
        "output": report.summary_output(parts, notes),
        "output_format": "text",
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": tests,
    }
    if sandbox is not None and sandbox.budget is not None:
        results["extra_data"] = {"memory_mb": vars(sandbox.budget)}
    report.validate_results(results)
    if details is not None:
        details["flags"] = flags
    if out is not None:
        meta = {"submission": str(submission), "notes": notes, "parts": parts,
                "student_output": "\n".join(dict.fromkeys(student_output))}
        (out / "report.md").write_text(report.render_report(results, meta))
        report.write_json_atomic(out / "results.json", results)
    return results


def _test(rubric_test, passed, output):
    return {"name": rubric_test["name"], "score": float(rubric_test["points"]) if passed else 0.0,
            "max_score": float(rubric_test["points"]), "status": "passed" if passed else "failed",
            "output": output or ("passed" if passed else "failed"),
            "visibility": rubric_test.get("visibility", "visible")}


def _grade_module(module, rubric, submission, sandbox, deadline, cuda, notes, student_output,
                  flags, owner=None):
    path, note = find_submission(submission, module.submission_file, owner)
    if note:
        notes.append(note)
        flags.append(("missing" if path is None else "renamed", note))
    if path is None:
        why = note or f"no {module.submission_file} in the submission"
        return [_test(t, False, f"not graded: {why}") for t in rubric]
    files = {module.submission_file: path}
    if module.submission_file.endswith(".ipynb"):
        # the sandbox imports the notebook's definitions only, converted here from the JSON
        try:
            source, nb_notes = notebook.notebook_to_module(path.read_bytes())
        except notebook.NotebookError as exc:
            return [_test(t, False, f"{module.submission_file}: {exc}") for t in rubric]
        notes += nb_notes
        converted = sandbox.root / f"{module.module}-from-notebook.py"
        converted.write_text(source)
        files = {f"{module.module}.py": converted}
    files.update({Path(g).name: ROOT / g for g in module.given})
    sandbox.load(files, module=module.module, probes=ROOT / module.probes)
    implementations = load_tests(module)
    missing = [t["id"] for t in rubric if t["id"] not in implementations]
    if missing:
        raise RuntimeError(f"rubric tests without an implementation: {missing}")
    ctx = Context(sandbox, load_reference(module), deadline, cuda)
    ctx.tests = implementations
    ctx.names = {t["id"]: t["name"] for t in rubric}
    imported = ctx.probe("import")
    if not imported.ok:
        student_output += ctx.outputs
        why = ("your file could not be imported: " + imported.error
               + f"\n  run `python -c \"import {module.module}\"` in your folder to see the full "
               "error.")
        if imported.status == "timeout":
            flags.append(("timeout", f"importing {module.submission_file}: {imported.error}"))
        else:
            flags.append(("import_error", imported.error.strip().splitlines()[-1][:200]
                          if imported.error.strip() else "does not import"))
        return [_test(t, False, why) for t in rubric]
    results = []
    for t in rubric:
        verdict = ctx.verdict(t["id"])
        if not verdict.passed and verdict.message.startswith("the returned values"):
            verdict.message = f"{t['name'].split(':')[0]}: {verdict.message}"
        results.append(_test(t, verdict.passed, verdict.message))
    student_output += ctx.outputs
    if ctx.timeouts:
        flags.append(("timeout", f"{ctx.timeouts} probe(s) of {module.submission_file} timed out"))
    return results
