"""Solution markers in LaTeX sources (the written part): the same regions as in Python files,
written as LaTeX comments.

    % BEGIN SOLUTION
    ...the answer, its rubric and its source...
    % END SOLUTION
    % BEGIN STUB
    % \\answerbox[7cm]
    % END STUB

The region and its markers are dropped; each stub line loses ONE leading "% " (a lone "%" becomes
an empty line). A region with no stub becomes `\\answerbox` (the default box). A malformed,
unknown, nested or unbalanced marker raises markers.MarkerError with `file:line`, as in Python
files. A region's `function` is the id of the last `\\question{ID}{points}` before it, so that the
leak gate can say which answer leaked.
"""

import re

from release.markers import MarkerError, Region, Stripped

BEGIN_SOLUTION = "% BEGIN SOLUTION"
END_SOLUTION = "% END SOLUTION"
BEGIN_STUB = "% BEGIN STUB"
END_STUB = "% END STUB"
KNOWN = (BEGIN_SOLUTION, END_SOLUTION, BEGIN_STUB, END_STUB)
DEFAULT_STUB = "\\answerbox\n"

_MARKER_LIKE = re.compile(r"^%\s*(BEGIN|END)(\s|$)")
# A LaTeX marker anywhere in a line, for the leak gate.
MARKER_ANYWHERE = re.compile(r"%\s*(BEGIN|END)\s+(SOLUTION|STUB)\b")
QUESTION = re.compile(r"\\question\{([^}]*)\}\{([^}]*)\}")


def _marker(line):
    stripped = line.strip()
    if not _MARKER_LIKE.match(stripped):
        return None
    return " ".join(stripped.split())


def strip_tex_solutions(text, path="<text>"):
    """Return the student version of a LaTeX source and what was taken out (markers.Stripped)."""
    out, regions, outside = [], [], []
    region, in_stub, just_closed, question = None, False, False, None
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        marker = _marker(line)
        if marker is not None and marker not in KNOWN:
            raise MarkerError(path, number, f"unknown marker {line.strip()!r}; the markers are "
                                            + ", ".join(repr(k) for k in KNOWN))
        follows_region, just_closed = just_closed, False
        if in_stub:
            if marker == END_STUB:
                in_stub, region = False, None
                continue
            if marker is not None:
                raise MarkerError(path, number, f"{marker!r} inside the STUB block opened at "
                                                f"line {region.stub_begin}")
            body = line.rstrip("\r\n").lstrip()
            if body.startswith("% "):
                out.append(body[2:] + "\n")
            elif body in ("%", ""):
                out.append("\n")
            else:
                raise MarkerError(path, number, "a STUB line must start with '% ' or be a lone "
                                                f"'%'; got {body!r}")
            continue
        if region is not None:
            if marker == END_SOLUTION:
                region.end = number
                regions.append(region)
                region, just_closed = None, True
                continue
            if marker is not None:
                raise MarkerError(path, number, f"{marker!r} inside the SOLUTION region opened "
                                                f"at line {region.begin}")
            region.lines.append((number, line.rstrip("\r\n")))
            continue
        if marker == BEGIN_STUB:
            if not follows_region:
                raise MarkerError(path, number, f"{BEGIN_STUB!r} must come directly after an "
                                                f"{END_SOLUTION!r} line")
            region = regions[-1]
            region.stub_begin = number
            in_stub = True
            continue
        if follows_region:
            out.append(DEFAULT_STUB)
        if marker == BEGIN_SOLUTION:
            region = Region(begin=number, end=-1, function=question)
            continue
        if marker is not None:
            raise MarkerError(path, number, f"{marker!r} without a matching opening marker")
        found = QUESTION.search(line)
        if found and not line.lstrip().startswith("%"):
            question = found.group(1)
        out.append(line)
        outside.append((number, line.rstrip("\r\n")))
    if in_stub:
        raise MarkerError(path, region.stub_begin, f"{BEGIN_STUB!r} is never closed")
    if region is not None:
        raise MarkerError(path, region.begin, f"{BEGIN_SOLUTION!r} is never closed")
    if just_closed:
        out.append(DEFAULT_STUB)
    return Stripped(text="".join(out), regions=regions, outside=outside)


def find_tex_markers(text):
    """(line number, line) of every line that carries a LaTeX marker, anywhere in it."""
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)
            if MARKER_ANYWHERE.search(line)]


def key_text(text):
    """The key's LaTeX: the staff source with its marker lines and stub blocks removed."""
    out, in_stub = [], False
    for line in text.splitlines(keepends=True):
        marker = _marker(line)
        if marker == BEGIN_STUB:
            in_stub = True
        elif marker == END_STUB:
            in_stub = False
        elif marker is None and not in_stub:
            out.append(line)
    return "".join(out)


# LaTeX lines that say nothing by themselves (environment boundaries, list items, alignment),
# so that sharing one with the question text is no leak.
_STRUCTURE = re.compile(r"\\(begin|end)\{[^}]*\}(\[[^\]]*\])?|\\item(\[[^\]]*\])?|\\\[|\\\]|"
                        r"\\\\|&|\\(quad|qquad|nonumber|noindent|medskip|smallskip|bigskip)\b")


def is_generic_tex_line(line, min_chars):
    """True for a LaTeX line too generic to count as answer text (a comment, structure only)."""
    key = "".join(line.split())
    if key.startswith("%"):
        return True
    return len("".join(_STRUCTURE.sub("", line).split())) < min_chars
