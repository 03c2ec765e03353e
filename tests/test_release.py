"""The release tool: the committed assignment/ is current, and planted leaks stop a release.

Planted problems are made in a temporary copy of the tree, never in the real one.
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the release package, also under a bare `pytest`

from release import build, gates  # noqa: E402
from release.cli import release  # noqa: E402

TREE = ["solutions", "assignment", "tests_public", "data_scripts", "release", "tests_hidden",
        "autograder", "requirements.txt"]
JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "results", "data", "*.pt")


def quiet(*_):
    pass


@pytest.fixture
def tree(tmp_path):
    """A copy of the parts of the repository a release reads."""
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in TREE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, copy / name, ignore=JUNK)
        elif src.is_file():
            shutil.copy2(src, copy / name)
    # Start from a fresh assignment/ so that only the planted change differs.
    manifest = build.load_manifest(copy / "release" / "manifest.toml")
    build.write_tree(build.build_assignment(copy, manifest).files, copy / "assignment")
    return copy


def check(root):
    """Run the fast gates and the staleness check on `root`; return {gate: problems}, stale."""
    outcome = release(root, check=True, log=quiet)
    return {g.name: g.problems for g in outcome.gates}, outcome.stale


def failing(problems):
    return "\n".join(p for ps in problems.values() if ps for p in ps)


def replace_once(path, old, new):
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} should occur once in {path}"
    path.write_text(text.replace(old, new))


def test_committed_assignment_is_up_to_date_and_leak_free():
    proc = subprocess.run([sys.executable, "-m", "release", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for gate in ("markers", "leaks", "signatures", "stable", "staleness"):
        assert any(line.split()[:2] == [gate, "ok"] for line in proc.stdout.splitlines()), (
            f"{gate} not reported ok:\n{proc.stdout}")


def test_unmodified_copy_of_the_tree_passes_the_fast_gates(tree):
    problems, stale = check(tree)
    assert not failing(problems), failing(problems)
    assert set(problems) >= {"markers", "leaks", "signatures", "stable"}
    assert stale == []


def test_solution_line_copied_into_a_given_function_is_a_leak(tree):
    replace_once(tree / "solutions" / "diffusion.py",
                 "        variance = extract(self.posterior_variance, t, x_t.shape)\n",
                 "        variance = extract(self.posterior_variance, t, x_t.shape)\n"
                 "        predicted_noise = self.model(x_t, t)\n")
    problems, _ = check(tree)
    leaks = "\n".join(problems["leaks"])
    assert "assignment/diffusion.py:" in leaks
    assert "(in q_posterior)" in leaks
    assert "line of the p_loss solution (solutions/diffusion.py:" in leaks
    assert "'predicted_noise = self.model(x_t, t)'" in leaks


def test_solution_line_in_a_public_test_is_a_leak(tree):
    line = "alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)"
    with open(tree / "tests_public" / "conftest.py", "a") as f:
        f.write(f"\n\ndef _reference():\n    {line}\n")
    problems, _ = check(tree)
    assert any(p.startswith("student.zip:tests_public/conftest.py:") and line in p
               and "Diffusion.__init__ solution" in p for p in problems["leaks"]), problems


@pytest.mark.parametrize("where, marker", [
    ("unet.py", "# BEGIN SOLUTON"),
    ("unet.py", "# END SOLUTION"),
    ("README.md", "# BEGIN SOLUTION"),
])
def test_stray_marker_stops_the_release_at_its_line(tree, where, marker):
    path = tree / "solutions" / where
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(3, marker + "\n")
    path.write_text("".join(lines))
    problems, _ = check(tree)
    assert problems["markers"], problems
    assert problems["markers"][0].startswith(f"solutions/{where}:4: ")
    assert marker.split()[-1] in problems["markers"][0]


def test_hidden_test_file_listed_in_the_manifest_is_a_leak(tree):
    hidden = tree / "tests_hidden" / "test_planted_secret.py"
    hidden.parent.mkdir(exist_ok=True)
    hidden.write_text("def test_secret():\n    assert 41 + 1 == 42  # planted\n")
    replace_once(tree / "release" / "manifest.toml",
                 'include = ["assignment", "tests_public", "data_scripts", "requirements.txt"]',
                 'include = ["assignment", "tests_public", "data_scripts", "requirements.txt", '
                 '"tests_hidden/test_planted_secret.py"]')
    problems, _ = check(tree)
    leaks = "\n".join(problems["leaks"])
    assert ("student.zip:tests_hidden/test_planted_secret.py: shipped from a forbidden folder "
            "(tests_hidden/)") in leaks
    assert "same content as tests_hidden/test_planted_secret.py" in leaks


def test_hidden_test_copied_under_another_name_is_found_by_content(tree):
    hidden = tree / "tests_hidden" / "test_planted_secret.py"
    hidden.parent.mkdir(exist_ok=True)
    hidden.write_text("def test_secret():\n    assert 41 + 1 == 42  # planted\n")
    shutil.copy(hidden, tree / "tests_public" / "test_innocent.py")
    problems, _ = check(tree)
    assert ("student.zip:tests_public/test_innocent.py: has the same content as "
            "tests_hidden/test_planted_secret.py, which must not be shipped") in problems["leaks"]


def test_file_no_manifest_rule_covers_stops_the_release(tree):
    (tree / "solutions" / "answers.txt").write_text("q_sample: sqrt(abar) x0 + ...\n")
    problems, _ = check(tree)
    assert "solutions/answers.txt is matched by none of" in failing(problems)


def test_stub_that_changes_a_signature_fails_the_signature_gate(tree):
    replace_once(tree / "solutions" / "diffusion.py",
                 '    def noise_like(self, shape, device):\n'
                 '        """Standard normal noise of `shape` on `device`: the one place this '
                 'class draws noise."""\n'
                 '        return torch.randn(shape, device=device)\n',
                 '    # BEGIN SOLUTION\n'
                 '    def noise_like(self, shape, device):\n'
                 '        """Standard normal noise of `shape` on `device`: the one place this '
                 'class draws noise."""\n'
                 '        return torch.randn(shape, device=device)\n'
                 '    # END SOLUTION\n'
                 '    # BEGIN STUB\n'
                 '    # def noise_like(self, shape):\n'
                 '    #     raise NotImplementedError("noise_like")\n'
                 '    # END STUB\n')
    problems, _ = check(tree)
    assert ("assignment/diffusion.py: Diffusion.noise_like differs from solutions/diffusion.py "
            "in signature, docstring") in problems["signatures"]


def test_check_names_the_stale_and_extra_files(tree):
    with open(tree / "solutions" / "unet.py", "a") as f:
        f.write("# a change not yet released\n")
    (tree / "assignment" / "notes.py").write_text("x = 1\n")
    problems, stale = check(tree)
    assert not failing(problems)
    assert stale == ["notes.py (should not be there)", "unet.py (content differs)"]


def test_two_builds_are_byte_identical_with_normalized_zip_entries(tmp_path):
    manifest = build.load_manifest(ROOT / "release" / "manifest.toml")
    first = gates.snapshot(ROOT, manifest, tmp_path / "a")
    second = gates.snapshot(ROOT, manifest, tmp_path / "b")
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)
    with zipfile.ZipFile(tmp_path / "a" / "student.zip") as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names)
    assert "README.md" in names and "assignment/diffusion.py" in names
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {(i.external_attr >> 16) & 0o777 for i in infos} <= {0o644, 0o755}


def test_student_zip_holds_the_kit_and_no_staff_files(tmp_path):
    manifest = build.load_manifest(ROOT / "release" / "manifest.toml")
    gates.snapshot(ROOT, manifest, tmp_path)
    with zipfile.ZipFile(tmp_path / "student.zip") as zf:
        names = zf.namelist()
        handout = zf.read("README.md")
    tops = {n.split("/")[0] for n in names}
    assert tops == {"README.md", "assignment", "tests_public", "data_scripts", "requirements.txt"}
    assert handout == (ROOT / "solutions" / "README.md").read_bytes()
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pt"))]


@pytest.mark.slow
def test_full_release_end_to_end_into_a_temp_folder(tmp_path):
    """`python -m release --out DIR` with every gate (pytest and the grader, ~1 min)."""
    if not (ROOT / "autograder" / "package.py").is_file():
        pytest.skip("autograder/package.py does not exist yet: no autograder zip can be built")
    proc = subprocess.run([sys.executable, "-m", "release", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "dist" / "student.zip").is_file()
    assert (tmp_path / "dist" / "autograder.zip").is_file()
    expected = {rel: (ROOT / "assignment" / rel).read_bytes()
                for rel in build.files_under(ROOT / "assignment")}
    written = {rel: (tmp_path / "assignment" / rel).read_bytes()
               for rel in build.files_under(tmp_path / "assignment")}
    assert written == expected


def test_outputs_of_a_training_run_in_assignment_are_kept_and_not_called_stale(tree):
    run = tree / "assignment" / "results" / "loss.csv"
    run.parent.mkdir()
    run.write_text("step,loss\n1,0.9\n")
    problems, stale = check(tree)
    assert stale == []
    manifest = build.load_manifest(tree / "release" / "manifest.toml")
    built = build.build_assignment(tree, manifest)
    build.write_tree(built.files, tree / "assignment", keep=manifest["assignment"]["exclude"])
    assert run.read_text() == "step,loss\n1,0.9\n"


def _handout_commands():
    """(script, argv) of every `python main.py ...` / `python data_scripts/...` in the handout."""
    import re
    import shlex

    text = (ROOT / "solutions" / "README.md").read_text()
    found = []
    for match in re.finditer(r"python ((?:data_scripts/)?\w+\.py)([^`\n#]*)", text):
        found.append((match.group(1), shlex.split(match.group(2))))
    return found


def test_handout_commands_use_flags_the_scripts_accept():
    import importlib.util

    commands = _handout_commands()
    assert {s for s, _ in commands} >= {"main.py", "data_scripts/download_afhq.py",
                                        "data_scripts/prepare_mnist.py"}
    modules = {}
    for script, argv in commands:
        if argv == ["--help"]:
            continue
        if script not in modules:
            in_kit = script in ("main.py", "train_binary.py")  # run from the homework folder
            path = ROOT / ("solutions/" + script if in_kit else script)
            spec = importlib.util.spec_from_file_location(f"_handout_{path.stem}", path)
            modules[script] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(modules[script])
        module = modules[script]
        try:
            if script in ("main.py", "train_binary.py"):
                module.build_parser().parse_args(argv)
            else:
                module.parse_args(argv)
        except SystemExit as exit_:
            pytest.fail(f"the handout's `python {script} {' '.join(argv)}` is rejected "
                        f"(exit {exit_.code})")


def test_a_failing_gate_writes_nothing_and_shows_its_whole_cause(tree, tmp_path, monkeypatch):
    # The slow gates are replaced here (pytest and the grader take minutes): the public ones pass,
    # the grader's fails with a long traceback from the sandbox, as a real failure would.
    cause = "\n".join(["Traceback (most recent call last):"]
                      + [f'  File "worker.py", line {n}, in probe' for n in range(40)]
                      + ["RuntimeError: the last line, which names the cause"])

    def grader_fails(root, scratch):
        return [f"solutions/ loses points on 'p_sample: x': 0/4:\n{gates._tail(cause)}"]

    monkeypatch.setattr(gates, "check_reference_public", lambda root, scratch: [])
    monkeypatch.setattr(gates, "check_stubs_public", lambda kit, scratch: [])
    monkeypatch.setattr(gates, "check_reference_grader", grader_fails)
    monkeypatch.setattr(gates, "check_stubs_grader", lambda root, assignment, scratch: [])
    out = tmp_path / "out"
    lines = []
    outcome = release(tree, out=out, log=lines.append)
    assert not outcome.ok and outcome.written == []
    assert not out.exists(), sorted(p.as_posix() for p in out.rglob("*"))
    log = "\n".join(lines)
    assert "RuntimeError: the last line, which names the cause" in log
    assert 'line 39, in probe' in log and 'line 0, in probe' in log

    # The same release with every gate passing writes everything.
    monkeypatch.setattr(gates, "check_reference_grader", lambda root, scratch: [])
    outcome = release(tree, out=out, log=quiet)
    assert outcome.ok, outcome.gates
    assert (out / "dist" / "student.zip").is_file() and (out / "assignment" / "diffusion.py").is_file()
    assert (out / "dist" / "autograder.zip").is_file()
    assert not list(out.rglob("*.tmp"))
