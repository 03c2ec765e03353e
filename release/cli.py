"""`python -m release`: generate assignment/ and the zips from solutions/, behind the gates.

Everything is built in a scratch folder first and checked there; the outputs are written only
when their gates pass, so a failed release leaves the committed assignment/ as it was.
"""

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from release import build, gates, lab
from release.markers import MarkerError

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Gate:
    name: str
    what: str
    problems: list | None = None  # None: not run
    seconds: float = 0.0
    note: str = ""

    @property
    def ok(self):
        return self.problems == []


@dataclass
class Outcome:
    gates: list = field(default_factory=list)
    written: list = field(default_factory=list)
    stale: list = field(default_factory=list)

    @property
    def ok(self):
        """No gate found a problem (gates skipped with --skip-gates do not count)."""
        return not any(g.problems for g in self.gates) and not self.stale


def _run_gate(outcome, name, what, fn, *args, log=print):
    gate = _timed_gate(name, what, fn, *args)
    outcome.gates.append(gate)
    _print_gate(gate, log)
    return gate.ok


def _timed_gate(name, what, fn, *args):
    """Run one gate function; its problems (or its ReleaseError) and time go in a Gate."""
    gate = Gate(name, what)
    start = time.perf_counter()
    try:
        result = fn(*args)
    except (build.ReleaseError, MarkerError) as err:
        result = [str(err)]
    gate.seconds = time.perf_counter() - start
    if result is None:
        gate.note = "not checked (release/colab_notebook.py does not exist)"
        gate.problems = []
    elif isinstance(result, tuple):  # (problems, note)
        gate.problems, gate.note = list(result[0]), result[1]
    else:
        gate.problems = list(result)
    return gate


def _print_gate(gate, log):
    status = "ok" if gate.ok else ("FAILED" if gate.problems else "skipped")
    log(f"  {gate.name:<18} {status:<7} {gate.seconds:6.1f}s  {gate.what}"
        + (f"  [{gate.note}]" if gate.note else ""))
    for problem in (gate.problems or [])[:25]:
        log("      - " + problem.replace("\n", "\n        "))
    if gate.problems and len(gate.problems) > 25:
        log(f"      ... and {len(gate.problems) - 25} more")


def _compare_tree(expected, folder, ignore=()):
    """Names of the files that differ between {rel: bytes} and the folder on disk, apart from
    those matching the globs in `ignore` (outputs of a training run, bytecode)."""
    folder = Path(folder)
    on_disk = set(build.files_under(folder)) if folder.is_dir() else set()
    on_disk = {p for p in on_disk if not build.matches(p, ignore)}
    diff = []
    for rel in sorted(set(expected) | on_disk):
        if rel not in on_disk:
            diff.append(f"{rel} (missing)")
        elif rel not in expected:
            diff.append(f"{rel} (should not be there)")
        elif (folder / rel).read_bytes() != expected[rel]:
            diff.append(f"{rel} (content differs)")
    return diff


def release(root=REPO, out=None, check=False, skip_gates=False, log=print):
    """Build (and unless skip_gates, check) a release of the tree at `root`.

    Writes <out>/assignment, <out>/dist/student.zip and <out>/dist/autograder.zip (out defaults
    to root). With check=True nothing is written: the fast gates run and the committed
    <out>/assignment is compared with a fresh build. Returns an Outcome.
    """
    root = Path(root).resolve()
    out = Path(out).resolve() if out else root
    outcome = Outcome()
    manifest_path = root / "release" / "manifest.toml"
    try:
        manifest = build.load_manifest(manifest_path)
        built = build.build_assignment(root, manifest)
    except (build.ReleaseError, MarkerError) as err:
        outcome.gates.append(Gate("markers", "solution markers are well formed", [str(err)]))
        _print_gate(outcome.gates[-1], log)
        return outcome
    spec = manifest["assignment"]
    regions = sum(len(f.result.regions) for f in built.stripped)
    log(f"release: {spec['source']}/ -> {spec['output']}/: {len(built.files)} files "
        f"({regions} solution regions stubbed in "
        f"{sum(1 for f in built.stripped if f.result.regions)} file(s); "
        f"{len(built.excluded)} excluded)")
    outcome.gates.append(Gate("markers", "solution markers are well formed", []))
    _print_gate(outcome.gates[-1], log)

    with tempfile.TemporaryDirectory(prefix="release-") as tmp:
        tmp = Path(tmp)
        try:
            student = build.student_entries(root, manifest, built.files)
            first = gates.snapshot(root, manifest, tmp / "first")
        except (build.ReleaseError, MarkerError) as err:
            outcome.gates.append(Gate("kit", "the student kit can be assembled", [str(err)]))
            _print_gate(outcome.gates[-1], log)
            return outcome
        grader_error = None
        try:
            grader_entries = build.autograder_entries(root, manifest)
        except build.ReleaseError as err:
            grader_entries, grader_error = None, str(err)

        _run_gate(outcome, "leaks", "no answer line, marker or hidden file reaches students",
                  gates.check_leaks, root, manifest, built, student, log=log)
        _run_gate(outcome, "signatures", "same signatures, docstrings and names as solutions/",
                  gates.check_signatures, built, manifest, log=log)
        _run_gate(outcome, "stable", "a second build is byte-identical",
                  gates.check_stable, root, manifest, first, log=log)
        _run_gate(outcome, "notebook", "run_in_colab.ipynb matches release/colab_notebook.py",
                  gates.check_notebook, root, manifest, log=log)
        _run_gate(outcome, "lab", "the Otter student notebook holds no solution or hidden test",
                  lab.check_notebooks, root, manifest, built, log=log)

        if check:
            committed = out / spec["output"]
            outcome.stale = _compare_tree(built.files, committed, spec["exclude"])
            if outcome.stale:
                log(f"  {'staleness':<18} FAILED          committed {committed} differs from a "
                    "fresh build (run `make release`):")
                for line in outcome.stale:
                    log(f"      - {line}")
            else:
                log(f"  {'staleness':<18} ok               committed {spec['output']}/ is "
                    "up to date")
            return outcome

        # The student kit exactly as students unzip it.
        student_zip = tmp / "student.zip"
        build.write_zip(student_zip, student)
        kit = gates.unzip(student_zip, tmp / "kit")
        if skip_gates:
            for name in ("reference_public", "stubs_public", "reference_grader", "stubs_grader"):
                outcome.gates.append(Gate(name, "", None, note="skipped (--skip-gates)"))
                _print_gate(outcome.gates[-1], log)
        else:
            slow = [
                ("reference_public", "pytest tests_public --submission solutions passes",
                 gates.check_reference_public, root, tmp / "a"),
                ("stubs_public", "pytest tests_public in the kit: every test fails with "
                 "'not implemented'", gates.check_stubs_public, kit, tmp / "b"),
            ]
            if (root / "autograder").is_dir():
                slow += [
                    ("reference_grader", "solutions/ gets full marks",
                     gates.check_reference_grader, root, tmp / "c"),
                    ("stubs_grader", "the stubs score 0 on every graded test",
                     gates.check_stubs_grader, root, kit / spec["output"], tmp / "d"),
                ]
            else:
                slow += [(name, "grader scores", lambda: [
                    "autograder/ does not exist yet: cannot run `python -m autograder grade`"])
                    for name in ("reference_grader", "stubs_grader")]
            log("  (running pytest and the grader, two at a time...)")
            # Each runs in its own subprocess: two at a time keeps both cores busy.
            with ThreadPoolExecutor(max_workers=2) as pool:
                futures = [pool.submit(_timed_gate, *job) for job in slow]
                for future in futures:
                    outcome.gates.append(future.result())
                    _print_gate(outcome.gates[-1], log)

        if grader_error:
            outcome.gates.append(Gate("autograder_zip", "dist/autograder.zip is built",
                                      [grader_error]))
            _print_gate(outcome.gates[-1], log)
        # Nothing is written unless every gate passed: a failed release leaves the committed
        # assignment/ and dist/ exactly as they were.
        if skip_gates or all(g.ok for g in outcome.gates):
            _write_outputs(outcome, root, out, manifest, built, student_zip, len(student),
                           grader_entries, tmp)
    return outcome


def _write_outputs(outcome, root, out, manifest, built, student_zip, n_student, grader_entries,
                   tmp):
    """Put the checked build in place: the zips are finished in the scratch folder first and
    then moved, so no half-written zip is ever in dist/."""
    spec = manifest["assignment"]
    zips = [(student_zip, out / manifest["student_zip"]["path"], n_student)]
    if grader_entries is not None:
        staged = tmp / "autograder.zip"
        build.write_zip(staged, grader_entries)
        zips.append((staged, out / manifest["autograder_zip"]["path"], len(grader_entries)))
    build.write_tree(built.files, out / spec["output"], keep=spec["exclude"])
    outcome.written.append(f"{_show(out / spec['output'], root)}/ ({len(built.files)} files)")
    for staged, path, count in zips:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(staged, path.with_name(path.name + ".tmp"))
        path.with_name(path.name + ".tmp").replace(path)
        outcome.written.append(f"{_show(path, root)} ({count} files, "
                               f"{path.stat().st_size // 1024} KiB)")
    return outcome


def _show(path, root):
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m release",
        description="Generate assignment/ (solutions/ with every solution region replaced by its "
                    "stub), dist/student.zip and dist/autograder.zip, and check them: markers, "
                    "leaks, signatures, byte-stable rebuilds, the public tests and the grader on "
                    "the reference (full marks) and on the stubs (zero). Outputs are written only "
                    "when their gates pass.")
    parser.add_argument("--check", action="store_true",
                        help="write nothing: rebuild in a temp folder, run the fast gates and fail "
                             "if the committed assignment/ differs (used by `make test`)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="write DIR/assignment and DIR/dist/*.zip instead of into the "
                             "repository (with --check: compare DIR/assignment)")
    parser.add_argument("--skip-gates", action="store_true",
                        help="FOR DEBUGGING ONLY: write the outputs without running pytest and "
                             "the grader (markers, leaks and signatures are still reported); "
                             "never ship what this produces")
    parser.add_argument("--root", metavar="DIR", default=str(REPO),
                        help="the repository to release (default: this one)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    outcome = release(args.root, args.out, check=args.check, skip_gates=args.skip_gates)
    for line in outcome.written:
        print(f"wrote {line}")
    failed = [g.name for g in outcome.gates if g.problems] + (["staleness"] if outcome.stale
                                                                 else [])
    elapsed = time.perf_counter() - start
    if not outcome.ok:
        print(f"release FAILED ({', '.join(failed)}) in {elapsed:.1f}s", file=sys.stderr)
        return 1
    if args.skip_gates:
        print(f"release built WITHOUT the pytest/grader gates (--skip-gates) in {elapsed:.1f}s")
        return 0
    print(f"release {'check ' if args.check else ''}ok in {elapsed:.1f}s")
    return 0
