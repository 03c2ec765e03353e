"""The written part's build: LaTeX solution markers, the handout leak gate, the rubric, and the
PDFs (`make written`), which must build reproducibly.

The PDF test needs pdflatex (Debian: texlive-latex-base, installed by .ci/run). Without it the
test is skipped with the install hint, except in CI (CI=true), where it fails instead.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from release import build, written  # noqa: E402
from release.cli import release  # noqa: E402
from release.markers import MarkerError  # noqa: E402
from release.tex import key_text, strip_tex_solutions  # noqa: E402

SOURCE = ROOT / "solutions" / "written" / "homework.tex"


# ---------------------------------------------------------------- markers


TEX = r"""\question{1a}{2} What is 1 + 1?
% BEGIN SOLUTION
\begin{solution} It is $2$, by counting on fingers. \end{solution}
% END SOLUTION
% BEGIN STUB
% \answerbox[3cm]
%
% END STUB
\question{1b}{1} And 2 + 2?
% BEGIN SOLUTION
Four, by the same careful counting.
% END SOLUTION
Done.
"""


def test_region_with_stub_becomes_its_box_and_without_stub_the_default_box():
    out = strip_tex_solutions(TEX, "q.tex")
    assert out.text == ("\\question{1a}{2} What is 1 + 1?\n\\answerbox[3cm]\n\n"
                        "\\question{1b}{1} And 2 + 2?\n\\answerbox\nDone.\n")
    assert [r.function for r in out.regions] == ["1a", "1b"]
    assert [r.lines[0][1] for r in out.regions][1] == "Four, by the same careful counting."


def test_key_keeps_the_answers_and_drops_markers_and_stubs():
    key = key_text(TEX)
    assert "fingers" in key and "careful counting" in key
    assert "BEGIN" not in key and "END" not in key and "answerbox" not in key


@pytest.mark.parametrize("text, line, words", [
    ("% BEGIN SOLUTON\nx\n", 1, "unknown marker"),
    ("% BEGIN SOLUTION\n% BEGIN SOLUTION\n", 2, "inside the SOLUTION region"),
    ("% BEGIN SOLUTION\nx\n", 1, "never closed"),
    ("x\n% END SOLUTION\n", 2, "without a matching"),
    ("x\n% BEGIN STUB\n% y\n% END STUB\n", 2, "must come directly after"),
    ("% BEGIN SOLUTION\nx\n% END SOLUTION\n% BEGIN STUB\nnot a comment\n% END STUB\n", 5,
     "must start with '% '"),
])
def test_malformed_tex_markers_stop_with_file_and_line(text, line, words):
    with pytest.raises(MarkerError) as err:
        strip_tex_solutions(text, "w/h.tex")
    assert str(err.value).startswith(f"w/h.tex:{line}: ") and words in str(err.value)


def test_the_real_source_strips_cleanly_and_every_question_gets_a_box():
    text = SOURCE.read_text()
    out = strip_tex_solutions(text, "solutions/written/homework.tex")
    questions = [q["id"] for q in written.parse_questions(key_text(text))]
    boxed = [r.function for r in out.regions if r.function]  # the other one is \keytrue
    assert boxed == questions  # one box per question, in order
    assert "\\keyfalse" in out.text and "\\keytrue" not in out.text


# ---------------------------------------------------------------- gates


def test_handout_gate_passes_on_the_real_source_and_catches_a_copied_answer_line():
    handout, _, staff = written.sources(ROOT)
    assert written.check_handout(handout, staff) == []
    line = "and the last sum telescopes to $\\log q_\\phi(\\bz_1\\mid\\bx)-\\log q_\\phi(\\bz_T\\mid\\bx)$."
    assert line in staff
    problems = written.check_handout(handout + line + "\n", staff)
    assert len(problems) == 1 and "answer to 5c" in problems[0]
    assert written.check_handout(handout.replace("\\answerbox", "\\includegraphics{x}", 1),
                                 staff)


@pytest.fixture
def tree(tmp_path):
    """A copy of what a release reads, with a fresh assignment/."""
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "results", "data",
                                  "*.pt")
    copy = tmp_path / "repo"
    for name in ("solutions", "assignment", "tests_public", "data_scripts", "release",
                 "tests_hidden", "autograder", "requirements.txt"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, copy / name, ignore=junk)
        elif src.is_file():
            copy.mkdir(exist_ok=True)
            shutil.copy2(src, copy / name)
    manifest = build.load_manifest(copy / "release" / "manifest.toml")
    build.write_tree(build.build_assignment(copy, manifest).files, copy / "assignment")
    return copy


def test_release_ships_the_handout_source_without_answers_and_its_leak_gate_sees_tex(tree):
    handout = tree / "assignment" / "written" / "homework.tex"
    assert handout.is_file() and "\\answerbox" in handout.read_text()
    assert not (tree / "assignment" / "written" / "figures.py").exists()
    outcome = release(tree, check=True, log=lambda *_: None)
    assert outcome.ok, [g.problems for g in outcome.gates]
    # An answer line pasted into the question text reaches students: the leak gate says so.
    src = tree / "solutions" / "written" / "homework.tex"
    line = "$O(1)$ in $\\tau$. This is why training can draw a random $t$ for every example at no extra cost."
    text = src.read_text()
    assert line in text
    src.write_text(text.replace("\\section{Convolutions}", "\\section{Convolutions}\n" + line, 1))
    outcome = release(tree, check=True, log=lambda *_: None)
    leaks = "\n".join(next(g.problems for g in outcome.gates if g.name == "leaks"))
    assert "assignment/written/homework.tex:" in leaks and "line of the 6e solution" in leaks


def test_rubric_lists_every_question_with_points_steps_and_source():
    _, key, _ = written.sources(ROOT)
    md = written.rubric_markdown(key)
    questions = written.parse_questions(key)
    for q in questions:
        assert f"### {q['id']} ({q['points']:g} points)" in md
    assert "Total: 89 points in 38 questions" in md
    assert "\\bx" not in md and "\\ab" not in md  # the key's macros are expanded for Markdown


# ---------------------------------------------------------------- PDFs


def test_missing_pdflatex_says_what_to_install_and_still_writes_the_text_outputs(tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setattr(written.shutil, "which", lambda name: None)
    problems = written.build(ROOT, tmp_path, log=lambda *_: None)
    assert len(problems) == 1 and "texlive-latex-base" in problems[0]
    assert (tmp_path / "rubric.md").is_file() and (tmp_path / "handout.tex").is_file()
    assert not (tmp_path / "key.pdf").exists()


def _need_pdflatex():
    if shutil.which("pdflatex") is None:
        if os.environ.get("CI"):
            pytest.fail(written.INSTALL_HINT)
        pytest.skip(written.INSTALL_HINT)


@pytest.mark.slow
def test_make_written_builds_handout_and_key_reproducibly(tmp_path):
    _need_pdflatex()
    lines = []
    problems = written.build(ROOT, tmp_path, log=lines.append)
    assert problems == [], "\n".join(lines + problems)
    assert any(line.split()[:2] == ["reproducible", "ok"] for line in lines), lines
    for name in ("handout.pdf", "key.pdf"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"%PDF") and b"/ID" not in data and b"/CreationDate" not in data
    # The key embeds the three figures; the handout none of them.
    assert (tmp_path / "key.pdf").stat().st_size > (tmp_path / "handout.pdf").stat().st_size
