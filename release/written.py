"""`python -m release.written` (`make written`): the written part's handout, key and rubric.

From the one staff source, solutions/written/homework.tex (questions, answers, rubrics and
sources; answers between `% BEGIN SOLUTION` / `% END SOLUTION`, see release/tex.py):

    dist/written/handout.pdf   what students fill in and upload: an answer box under each question
    dist/written/handout.tex   the same as LaTeX (also shipped as assignment/written/homework.tex)
    dist/written/key.pdf       full derivations, rubric and source of every question (staff only)
    dist/written/rubric.md     points per step and common errors, for graders

The figures of the key are drawn by solutions/written/figures.py. PDFs are built with pdflatex
(Debian: texlive-latex-base) under a fixed date, without a trailer ID or file names, twice in two
different folders; the two builds must be byte-identical (gate "reproducible").
"""

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from release.markers import MarkerError
from release.tex import QUESTION, key_text, strip_tex_solutions

REPO = Path(__file__).resolve().parent.parent
SOURCE = Path("solutions/written/homework.tex")
FIGURES = Path("solutions/written/figures.py")
OUT = Path("dist/written")
# 2024-01-01 00:00 UTC: every PDF says this date, whenever it is built.
SOURCE_DATE_EPOCH = "1704067200"
# pdfTeX settings for byte-identical output: no /ID, no dates, no PTEX.* keys (file names).
_REPRODUCIBLE = r"\pdftrailerid{}\pdfinfoomitdate=1\pdfsuppressptexinfo=-1"
INSTALL_HINT = ("pdflatex was not found. The written part's PDFs need a small LaTeX: on Debian or "
                "Ubuntu run `sudo apt-get install --no-install-recommends texlive-latex-base` "
                "(about 120 MB; .ci/run installs it in CI); on macOS install MacTeX or BasicTeX. "
                "The rubric and handout.tex need no LaTeX: they are written anyway.")


class WrittenError(Exception):
    """The written part cannot be built; the message says what to fix."""


# ---------------------------------------------------------------- sources


def sources(root=REPO):
    """(handout LaTeX, key LaTeX, staff source) from solutions/written/homework.tex."""
    path = Path(root) / SOURCE
    if not path.is_file():
        raise WrittenError(f"{SOURCE} does not exist")
    text = path.read_text(encoding="utf-8")
    handout = strip_tex_solutions(text, str(SOURCE)).text
    return handout, key_text(text), text


# ---------------------------------------------------------------- rubric


def _macros(key):
    """The key's argument-free macros (\\newcommand{\\bx}{\\mathbf{x}}), to expand them in Markdown,
    where only standard LaTeX math renders."""
    found = re.findall(r"^\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}\s*$", key, flags=re.M)
    return {name: body for name, body in found}


def _expand(text, macros):
    if not macros:
        return text
    pattern = re.compile(r"\\(" + "|".join(sorted(macros, key=len, reverse=True)) + r")(?![A-Za-z])")
    return pattern.sub(lambda m: macros[m.group(1)], text)


def _md_inline(text, macros=None):
    """LaTeX prose -> Markdown (math stays between $...$, which GitHub and Gradescope render)."""
    text = _expand(text, macros)
    text = text.replace("\\_", "_").replace("\\textbackslash ", "\\").replace("\\textbackslash{}", "\\")
    text = re.sub(r"\\emph\{([^{}]*)\}", r"*\1*", text)
    text = re.sub(r"\\textbf\{([^{}]*)\}", r"**\1**", text)
    text = re.sub(r"\\texttt\{([^{}]*)\}", r"`\1`", text)
    text = text.replace("~", " ").replace("---", "—").replace("--", "–")
    text = text.replace("``", '"').replace("''", '"')
    return " ".join(text.split())


def parse_questions(key):
    """Questions of the key, in order: dicts with id, points, section, source, rubric (a list of
    (points, text)) and errors (a list of text)."""
    questions, section, current, env, item, src_buf = [], None, None, None, None, None
    macros = _macros(key)

    def close_item():
        nonlocal item
        if item is not None and current is not None:
            pts, words = item
            if env == "rubric":
                current["rubric"].append((pts, _md_inline(" ".join(words), macros)))
            elif env == "errors":
                current["errors"].append(_md_inline(" ".join(words), macros))
        item = None

    for raw in key.splitlines():
        line = re.sub(r"(?<!\\)%.*", "", raw)
        stripped = line.strip()
        sec = re.match(r"\\section\*?\{(.*)\}", stripped)
        if sec and env is None:
            section = _md_inline(sec.group(1))
            continue
        found = QUESTION.search(stripped)
        if found and env is None:
            current = {"id": found.group(1), "points": float(found.group(2)),
                       "section": section, "source": "", "rubric": [], "errors": []}
            questions.append(current)
        if src_buf is not None:
            src_buf.append(stripped)
        elif "\\source{" in stripped and current is not None and env is None:
            src_buf = [stripped[stripped.index("\\source{") + len("\\source{"):]]
        if src_buf is not None:  # a \source{...} may span lines: read to its closing brace
            joined = " ".join(src_buf)
            depth, end = 1, None
            for k, ch in enumerate(joined):
                depth += {"{": 1, "}": -1}.get(ch, 0)
                if depth == 0:
                    end = k
                    break
            if end is not None:
                current["source"] = _md_inline(joined[:end], macros)
                src_buf = None
            continue
        begin = re.match(r"\\begin\{(rubric|errors)\}", stripped)
        if begin:
            env = begin.group(1)
            continue
        if re.match(r"\\end\{(rubric|errors)\}", stripped):
            close_item()
            env = None
            continue
        if env is not None:
            it = re.match(r"\\item(?:\[([^\]]*)\])?\s*(.*)", stripped)
            if it:
                close_item()
                pts = float(it.group(1)) if env == "rubric" else None
                item = (pts, [it.group(2)])
            elif item is not None and stripped:
                item[1].append(stripped)
    return questions


def _pts(x):
    return f"{x:g}"


def rubric_markdown(key):
    """The graders' rubric as Markdown, from the key's rubric and errors environments."""
    questions = parse_questions(key)
    total = sum(q["points"] for q in questions)
    out = ["# Written part: grading rubric", "",
           "For graders (never give this to students). Generated by `make written` from "
           "`solutions/written/homework.tex`; edit that file, not this one. The key "
           "(`key.pdf`) has the full derivations.", "",
           f"Total: {_pts(total)} points in {len(questions)} questions. Give the points of each "
           "step the answer shows (any correct route counts); a step that follows correctly "
           "from an earlier mistake still earns its points (the mistake costs points once).", ""]
    section = None
    for q in questions:
        if q["section"] != section:
            section = q["section"]
            part = sum(p["points"] for p in questions if p["section"] == section)
            out += [f"## {section} ({_pts(part)} points)", ""]
        out.append(f"### {q['id']} ({_pts(q['points'])} points)")
        if q["source"]:
            out.append(f"Source: {q['source']}")
        out.append("")
        for pts, text in q["rubric"]:
            out.append(f"- **{_pts(pts)}** {text}")
        if q["errors"]:
            out += ["", "Common errors:", ""]
            out += [f"- {text}" for text in q["errors"]]
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------- PDFs


def find_pdflatex():
    path = shutil.which("pdflatex")
    if path is None:
        raise WrittenError(INSTALL_HINT)
    return path


def draw_figures(root, folder):
    """Run solutions/written/figures.py's draw_all(folder)."""
    path = Path(root) / FIGURES
    spec = importlib.util.spec_from_file_location("_written_figures", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        return module.draw_all(folder)
    except Exception as err:  # noqa: BLE001 - report any failure with the file's name
        raise WrittenError(f"{FIGURES} failed: {type(err).__name__}: {err}") from None


def _errors(log):
    """The error lines of a pdflatex log ("! ..." and the line after)."""
    lines = log.splitlines()
    found = [f"{lines[i]} {lines[i + 1] if i + 1 < len(lines) else ''}".strip()
             for i, line in enumerate(lines) if line.startswith("!")]
    return "\n".join(found[:5]) or "\n".join(lines[-15:])


def compile_pdf(tex, name, folder, pdflatex=None):
    """Compile LaTeX text to folder/name.pdf (figures must already be in folder); return bytes."""
    pdflatex = pdflatex or find_pdflatex()
    folder = Path(folder)
    (folder / f"{name}.tex").write_text(tex, encoding="utf-8")
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, FORCE_SOURCE_DATE="1",
               TZ="UTC", LC_ALL="C")
    cmd = [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "-file-line-error",
           f"-jobname={name}", f"{_REPRODUCIBLE}\\input{{{name}.tex}}"]
    for _ in range(3):  # rerun while LaTeX says labels changed
        proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True,
                              errors="replace", timeout=300)
        log_path = folder / f"{name}.log"
        log = log_path.read_text(errors="replace") if log_path.is_file() else proc.stdout
        if proc.returncode != 0:
            raise WrittenError(f"pdflatex failed on {name}.tex:\n{_errors(log)}")
        if "Rerun to get" not in log:
            break
    return (folder / f"{name}.pdf").read_bytes()


def build_pdfs(root, folder, handout, key):
    """Build handout.pdf and key.pdf in `folder`; return {name: bytes}."""
    pdflatex = find_pdflatex()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handout_dir, key_dir = folder / "handout", folder / "key"
    handout_dir.mkdir(exist_ok=True)
    key_dir.mkdir(exist_ok=True)
    draw_figures(root, key_dir)  # the figures are answers: only the key's folder has them
    return {"handout.pdf": compile_pdf(handout, "handout", handout_dir, pdflatex),
            "key.pdf": compile_pdf(key, "key", key_dir, pdflatex)}


def check_handout(handout, staff):
    """Gate: the handout holds no answer line, no marker, and no figure of the key."""
    from release.tex import find_tex_markers, is_generic_tex_line

    problems = [f"handout.tex:{n}: marker left: {m!r}" for n, m in find_tex_markers(handout)]
    answers = {}
    for region in strip_tex_solutions(staff, str(SOURCE)).regions:
        for number, line in region.lines:
            if not is_generic_tex_line(line, 12):
                answers.setdefault("".join(line.split()), (number, region.function))
    for n, line in enumerate(handout.splitlines(), start=1):
        hit = answers.get("".join(line.split()))
        if hit:
            problems.append(f"handout.tex:{n}: line of the answer to {hit[1]} ({SOURCE}:{hit[0]}) "
                            f"leaked: {line.strip()!r}")
    if "\\includegraphics" in handout:
        problems.append("handout.tex includes a graphic: figures are answers, key only")
    return problems


def build(root=REPO, out=None, log=print):
    """Write handout.tex, rubric.md and (with pdflatex) handout.pdf and key.pdf into `out`.
    Returns the list of problems (empty when every gate passed and everything was written)."""
    root = Path(root)
    out = Path(out) if out else root / OUT
    start = time.perf_counter()
    try:
        handout, key, staff = sources(root)
    except (WrittenError, MarkerError) as err:
        return [str(err)]
    problems = check_handout(handout, staff)
    log(f"  {'handout':<14} {'FAILED' if problems else 'ok':<7} no answer, marker or figure in "
        "the handout")
    for p in problems:
        log(f"      - {p}")
    if problems:
        return problems
    files = {"handout.tex": handout.encode(), "rubric.md": rubric_markdown(key).encode()}
    try:
        with tempfile.TemporaryDirectory(prefix="written-a-") as a, \
                tempfile.TemporaryDirectory(prefix="written-bb-") as b:
            first = build_pdfs(root, a, handout, key)
            second = build_pdfs(root, b, handout, key)
    except WrittenError as err:
        out.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (out / name).write_bytes(data)
        log(f"wrote {', '.join(str(out / n) for n in files)} (no PDFs)")
        return [str(err)]
    differ = [n for n in first if first[n] != second[n]]
    log(f"  {'reproducible':<14} {'FAILED' if differ else 'ok':<7} two builds in two folders "
        "are byte-identical" + (f": {', '.join(differ)} differ" if differ else ""))
    if differ:
        return [f"{n} differs between two builds" for n in differ]
    files.update(first)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in sorted(files.items()):
        (out / name).write_bytes(data)
        log(f"wrote {out / name} ({len(data) // 1024} KiB)")
    log(f"written part built in {time.perf_counter() - start:.1f}s")
    return []


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m release.written", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", metavar="DIR", default=None, help=f"default: {OUT}")
    parser.add_argument("--root", metavar="DIR", default=str(REPO))
    args = parser.parse_args(argv)
    problems = build(args.root, args.out)
    if problems:
        print("written part FAILED:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
