"""The public tests (tests_public/) do what students are told: pass on the reference, fail on the
stub with "not implemented" (never a collection error), report a broken import as a failure of
every test, and compare with fixtures that the checked-in generator still reproduces."""

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from submissions.binary_mutants import ALTERNATES as BINARY_ALTERNATES
from submissions.binary_mutants import source
from submissions.correct_forms import ALTERNATES
from submissions.stubs import stub_source

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = ROOT / "tests_public"
CORRECT = sorted((ROOT / "tests" / "submissions" / "correct").glob("*.py"))


def run_public(submission, tmp_path, *extra, env=None):
    """Run `pytest tests_public` on `submission` in a fresh interpreter; (returncode, output,
    {test id: failure message or None})."""
    junit = tmp_path / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", str(PUBLIC), "-p", "no:cacheprovider", "-q",
           f"--junitxml={junit}", *extra]
    if submission is not None:
        cmd += ["--submission", str(submission)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    cases = {}
    if junit.exists():
        for case in ET.parse(junit).iter("testcase"):
            problem = case.find("failure")
            if problem is None:
                problem = case.find("error")
            name = f"{case.get('classname')}::{case.get('name')}"
            cases[name] = None if problem is None else (problem.get("message") or "") + (problem.text or "")
    return proc.returncode, proc.stdout + proc.stderr, cases


BINARY_REFERENCE = ROOT / "solutions" / "binary_diffusion.py"


def stage(tmp_path, text, name="submission", binary=None):
    """A submission folder with diffusion.py = text (and binary_diffusion.py = binary, if given)."""
    folder = tmp_path / name
    folder.mkdir()
    if text is not None:
        (folder / "diffusion.py").write_text(text)
    if binary is not None:
        (folder / "binary_diffusion.py").write_text(binary)
    return folder


def stubs(tmp_path):
    return stage(tmp_path, stub_source(), binary=stub_source(BINARY_REFERENCE))


def is_binary(test_name):
    return "test_public_binary" in test_name


def test_public_tests_pass_on_the_reference(tmp_path):
    code, output, cases = run_public(ROOT / "solutions", tmp_path)
    assert code == 0, output[-3000:]
    assert len(cases) >= 20 and all(msg is None for msg in cases.values())


@pytest.mark.slow
@pytest.mark.parametrize("path", CORRECT, ids=[p.stem for p in CORRECT])
def test_public_tests_pass_on_correct_alternates(tmp_path, path):
    # a file is accepted as well as a folder; it is part 1's, so part 2's tests are left out
    code, output, _ = run_public(path, tmp_path, "-k", "not binary")
    assert code == 0, output[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("alternate", ALTERNATES, ids=[a.name for a in ALTERNATES])
def test_public_tests_pass_on_correct_forms(tmp_path, alternate):
    """The forms the grader gives full marks (tests/submissions/correct_forms.py, float32
    schedules included) pass the public tests too: their tolerances are no tighter."""
    code, output, _ = run_public(stage(tmp_path, alternate.source()), tmp_path, "-k", "not binary")
    assert code == 0, output[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("alternate", BINARY_ALTERNATES, ids=[a.name for a in BINARY_ALTERNATES])
def test_public_binary_tests_pass_on_correct_alternates(tmp_path, alternate):
    folder = stage(tmp_path, None, binary=source(alternate.patches))
    code, output, cases = run_public(folder, tmp_path, "-k", "binary")
    assert code == 0 and len(cases) >= 15, output[-3000:]


def test_public_tests_accept_noise_drawn_with_torch_normal_and_normal_(tmp_path):
    # The grader answers every torch normal draw with known noise; the public tests must too.
    text = (ROOT / "solutions" / "diffusion.py").read_text()
    for old, new in [
        ("return mean + torch.sqrt(variance) * self.noise_like(x.shape, x.device)",
         "return mean + torch.sqrt(variance) * torch.empty_like(x).normal_()"),
        ("return self.p_sample_loop(self.noise_like(shape, device))",
         "return self.p_sample_loop(torch.normal(0.0, 1.0, size=shape, device=device))"),
    ]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    code, output, _ = run_public(stage(tmp_path, text), tmp_path, "-k",
                                 "(p_sample or sample) and not binary")
    assert code == 0, output[-3000:]


def test_public_tests_fail_on_the_stub_saying_not_implemented(tmp_path):
    code, output, cases = run_public(stubs(tmp_path), tmp_path)
    assert code == 1, f"expected test failures (exit 1), got exit {code}:\n{output[-3000:]}"
    assert cases, output[-3000:]
    silent = [name for name, msg in cases.items() if msg is None or "not implemented" not in msg]
    assert not silent, f"tests that pass or fail without 'not implemented' on the stub: {silent}"
    assert all(len(msg.strip().splitlines()) == 1 for msg in cases.values()), output[-3000:]
    assert "error" not in output.splitlines()[-1], "collection or setup errors on the stub"


def test_public_tests_report_a_broken_import_as_a_failure_of_every_test(tmp_path):
    code, output, cases = run_public(stage(tmp_path, "import torch\ndef q_sample(:\n"), tmp_path)
    assert code == 1, output[-3000:]
    part1 = {name: msg for name, msg in cases.items() if not is_binary(name)}
    assert part1 and all(msg and "your diffusion.py does not import" in msg and "SyntaxError" in msg
                         for msg in part1.values()), output[-3000:]
    # In full (with the line) once; the other tests say so in one line.
    assert sum("def q_sample(:" in msg for msg in part1.values()) == 1, output[-3000:]
    # part 2's tests fail on their own account: its file is missing
    part2 = {name: msg for name, msg in cases.items() if is_binary(name)}
    assert part2 and all(msg and "no binary_diffusion.py" in msg for msg in part2.values())


def test_public_tests_of_one_part_do_not_depend_on_the_other_file(tmp_path):
    folder = stage(tmp_path, "def broken(:\n", binary=BINARY_REFERENCE.read_text())
    code, output, cases = run_public(folder, tmp_path, "-k", "binary")
    assert code == 0 and len(cases) >= 15, output[-3000:]
    code, output, cases = run_public(tmp_path / "submission" / "binary_diffusion.py", tmp_path,
                                     "-k", "binary")
    assert code == 0 and cases, output[-3000:]


def test_public_tests_report_a_broken_init_once_and_in_one_line_elsewhere(tmp_path):
    # The natural mistake from the hint "F.pad shifts a sequence right": padding all T entries.
    reference = (ROOT / "solutions" / "diffusion.py").read_text()
    old = "F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)"
    assert reference.count(old) == 1
    code, output, cases = run_public(
        stage(tmp_path, reference.replace(old, "F.pad(alphas_cumprod, (1, 0), value=1.0)")),
        tmp_path, "-k", "not binary")
    assert code == 1 and cases and all(cases.values()), output[-3000:]
    full = [m for m in cases.values() if "shown in full" not in m]
    assert len(full) == 1, f"{len(full)} tests show the __init__ error in full:\n{output[-3000:]}"
    assert "Diffusion.__init__ raised RuntimeError: The size of tensor a (11) must match" in full[0]
    assert "diffusion.py:" in full[0] and "alphas_cumprod_prev" in full[0], full[0]
    first = output.index("Diffusion.__init__ raised RuntimeError: The size")
    assert first < output.index("shown in full"), "the full report must come first"
    assert all(len(m.strip().splitlines()) == 1 for m in cases.values() if m not in full)
    assert "Traceback" not in output and "During handling" not in output, output[-3000:]
    assert len(output.splitlines()) < 4 * len(cases) + 20, f"{len(output.splitlines())} lines"


def test_public_tests_show_the_students_line_for_an_error_in_a_function(tmp_path):
    reference = (ROOT / "solutions" / "diffusion.py").read_text()
    old = "predicted_noise = self.model(x_t, t)"
    assert reference.count(old) == 1
    code, output, cases = run_public(
        stage(tmp_path, reference.replace(old, "predicted_noise = self.model(x_t, t.float())")),
        tmp_path, "-k", "p_loss")
    assert code == 1, output[-3000:]
    message = next(m for name, m in cases.items() if name.endswith("p_loss_matches_reference[l1]"))
    assert "p_loss raised TypeError: the model must be called as model(x, t)" in message
    assert "at diffusion.py:" in message and "self.model(x_t, t.float())" in message, message
    assert "Traceback" not in output, output[-3000:]


def test_public_tests_stop_with_a_usage_error_without_a_submission(tmp_path):
    code, output, _ = run_public(tmp_path / "nowhere", tmp_path)
    assert code == 4 and "does not exist" in output and "--submission" in output, output[-2000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, output, _ = run_public(empty, tmp_path)
    assert code == 4 and "no diffusion.py or binary_diffusion.py" in output, output[-2000:]


def test_public_tests_read_the_submission_from_the_environment(tmp_path):
    import os

    env = dict(os.environ, DDPM_SUBMISSION=str(stubs(tmp_path)))
    code, _, cases = run_public(None, tmp_path, env=env)
    assert code == 1 and cases and all(msg and "not implemented" in msg for msg in cases.values())


OUTPUTS = ("/out", "/all", "p_loss/")  # fixture keys the reference computes (float32 arithmetic)


def _public_tolerance(key):
    """The tolerance the public tests accept for fixture `key` (rtol, atol): what separates a
    correct implementation from a wrong one there."""
    sys.path.insert(0, str(PUBLIC))
    try:
        import public_helpers
        import test_public_schedule
    finally:
        sys.path.remove(str(PUBLIC))
    if key.startswith("buffers/"):
        return test_public_schedule.RTOL, test_public_schedule.ATOL
    return public_helpers.OUT_RTOL, public_helpers.OUT_ATOL


def _binary_tolerance(key):
    """The same for part 2's fixtures; None where the value is an input or discrete (samples in
    {-1, +1}) and must match exactly."""
    sys.path.insert(0, str(PUBLIC))
    try:
        import test_public_binary as b
    finally:
        sys.path.remove(str(PUBLIC))
    if key.startswith("schedule/"):
        return b.SCHED_RTOL, b.SCHED_ATOL
    if key.startswith("p_loss/"):
        return b.LOSS_RTOL, b.LOSS_ATOL
    if key.endswith("/out") and key.split("/")[0] in ("posterior", "probs", "reverse"):
        return 0.0, b.PROB_ATOL
    return None


def _check_fixtures(stored_path, fresh, generator, tolerance):
    with np.load(stored_path) as stored, np.load(fresh) as new:
        assert sorted(stored.files) == sorted(new.files), "fixture keys changed: regenerate"
        for key in stored.files:
            a, b = stored[key], new[key]
            assert a.dtype == b.dtype and a.shape == b.shape, key
            hint = f"{key} differs: run `python tests_public/fixtures/{generator}` and commit"
            tol = tolerance(key)
            if tol is None:
                np.testing.assert_array_equal(a, b, err_msg=hint)
            else:
                np.testing.assert_allclose(a, b, rtol=tol[0] / 10, atol=tol[1] / 10, err_msg=hint)


def test_public_fixtures_are_reproduced_by_their_generator(tmp_path):
    """Inputs (numpy's RandomState under a fixed seed) must be reproduced bit for bit. Outputs are
    the reference's float32 arithmetic, which differs between CPUs (vector width, fused
    multiply-add; a 50-step chain moved by 2.7e-6 on an AMD EPYC): they must agree within a tenth
    of the tolerance the public tests apply to them, so that a correct submission passes against
    either machine's fixtures."""
    fresh = tmp_path / "public.npz"
    subprocess.run([sys.executable, str(PUBLIC / "fixtures" / "generate.py"), "--out", str(fresh)],
                   check=True, capture_output=True, timeout=120)
    _check_fixtures(PUBLIC / "fixtures" / "public.npz", fresh, "generate.py",
                    lambda key: _public_tolerance(key)
                    if key.startswith("buffers/") or any(k in key for k in OUTPUTS) else None)


def test_public_binary_fixtures_are_reproduced_by_their_generator(tmp_path):
    """Part 2's fixtures, on the same terms."""
    fresh = tmp_path / "public_binary.npz"
    subprocess.run([sys.executable, str(PUBLIC / "fixtures" / "generate_binary.py"), "--out",
                    str(fresh)], check=True, capture_output=True, timeout=120)
    _check_fixtures(PUBLIC / "fixtures" / "public_binary.npz", fresh, "generate_binary.py",
                    _binary_tolerance)
