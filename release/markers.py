"""Solution markers: turn a staff source file into the student's version.

A solution region is a run of lines between two comment lines

    # BEGIN SOLUTION
    ...the answer...
    # END SOLUTION

optionally followed, on the very next line, by the student's stub as comment lines

    # BEGIN STUB
    # raise NotImplementedError("q_sample: implement eq. (2); see the docstring")
    # END STUB

The region and its markers are dropped. Each stub line loses ONE leading "# " (a lone "#" becomes
an empty line); its indentation is kept. A region with no stub becomes
`raise NotImplementedError("<function>: not implemented")` at the region's indentation, where
<function> is the enclosing def (`Class.__init__` style for dunder methods, the bare name otherwise,
as in the graded test names).

Any other comment line that starts with "# BEGIN " or "# END " (a typo, a nested or unbalanced
marker, a STUB that does not directly follow a SOLUTION) stops the release with `file:line`.
"""

import ast
import re
from dataclasses import dataclass, field

BEGIN_SOLUTION = "# BEGIN SOLUTION"
END_SOLUTION = "# END SOLUTION"
BEGIN_STUB = "# BEGIN STUB"
END_STUB = "# END STUB"
KNOWN = (BEGIN_SOLUTION, END_SOLUTION, BEGIN_STUB, END_STUB)

# Anything that looks like a marker: "# BEGIN ...", "#BEGIN ...", "# END ...", "#   END".
_MARKER_LIKE = re.compile(r"^#\s*(BEGIN|END)(\s|$)")
# Used by the leak gate to find markers anywhere in shipped text (including mid-line).
MARKER_ANYWHERE = re.compile(r"#\s*(BEGIN|END)\s+(SOLUTION|STUB)\b")


class MarkerError(Exception):
    """A malformed marker; str() is `path:line: message`."""

    def __init__(self, path, line, message):
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line
        self.message = message


@dataclass
class Region:
    """One solution region of a source file (1-based line numbers of its markers)."""

    begin: int
    end: int
    function: str | None
    lines: list = field(default_factory=list)  # (line number, text) of the answer
    stub_begin: int | None = None
    stub_end: int | None = None


@dataclass
class Stripped:
    """The student's text of a file, and what was taken out of it."""

    text: str
    regions: list
    outside: list  # (line number, text) of the lines that are neither answer, stub nor marker


def _indent(line):
    return line[: len(line) - len(line.lstrip())]


def _marker(line):
    """The marker on this line (one of KNOWN), None if it is no marker; raise-free."""
    stripped = line.strip()
    if not _MARKER_LIKE.match(stripped):
        return None
    return " ".join(stripped.split())  # "#  BEGIN   SOLUTION" -> checked against KNOWN below


def _enclosing_functions(text):
    """Map each line number to the qualified name of the innermost def around it, if it parses."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return {}
    owner = {}

    def visit(node, classes):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, classes + [child.name])
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = child.name
                if classes and name.startswith("__") and name.endswith("__"):
                    name = f"{classes[-1]}.{name}"
                # Mark the body (including comment lines inside it) then let inner defs override.
                last = child.end_lineno or child.lineno
                for n in range(child.lineno, last + 1):
                    owner[n] = name
                visit(child, [])
            else:
                visit(child, classes)

    visit(tree, [])
    return owner


def strip_solutions(text, path="<text>"):
    """Return the student version of `text` (a Python source) and what was removed.

    Raises MarkerError (`path:line: message`) on any malformed, unknown, nested or unbalanced
    marker, on a stub line that is not a comment, on a region outside any function that has no
    stub, and when the result is not valid Python.
    """
    lines = text.splitlines(keepends=True)
    owners = _enclosing_functions(text)
    out, regions, outside = [], [], []
    region = None  # the open solution region
    region_indent = ""  # its BEGIN marker's indentation
    in_stub = False
    last_closed = None  # the region closed on the previous line (a STUB may follow it)

    def finish_default(reg, indent):
        if reg.function is None:
            raise MarkerError(path, reg.begin, "a SOLUTION region outside any function needs a "
                                               "BEGIN STUB block (there is no function to stub)")
        out.append(f'{indent}raise NotImplementedError("{reg.function}: not implemented")\n')

    pending_default = None  # (region, indent): emit a default raise unless a STUB follows

    for number, line in enumerate(lines, start=1):
        marker = _marker(line)
        if marker is not None and marker not in KNOWN:
            raise MarkerError(path, number, f"unknown marker {line.strip()!r}; the markers are "
                                            + ", ".join(repr(k) for k in KNOWN))
        follows_region = last_closed is not None
        last_closed = None

        if in_stub:
            if marker == END_STUB:
                in_stub = False
                region.stub_end = number
                region = None
                continue
            if marker is not None:
                raise MarkerError(path, number, f"{marker!r} inside the STUB block opened at "
                                                f"line {region.stub_begin}; close it with "
                                                f"{END_STUB!r} first")
            body = line.rstrip("\r\n")
            if not body.strip():
                out.append("\n")
                continue
            indent, rest = _indent(body), body.lstrip()
            if rest.startswith("# "):
                out.append(indent + rest[2:] + "\n")
            elif rest == "#":
                out.append("\n")
            else:
                raise MarkerError(path, number, "a STUB line must start with '# ' (then the "
                                                "student's line) or be a lone '#'; got "
                                                f"{rest!r}")
            continue

        if region is not None:  # inside a solution region
            if marker == END_SOLUTION:
                if _indent(line) != region_indent:
                    raise MarkerError(path, number, f"{END_SOLUTION!r} is not indented like the "
                                                    f"{BEGIN_SOLUTION!r} at line {region.begin}")
                region.end = number
                regions.append(region)
                pending_default = (region, region_indent)
                last_closed = region
                region = None
                continue
            if marker == BEGIN_SOLUTION:
                raise MarkerError(path, number, f"nested {BEGIN_SOLUTION!r}: the region opened at "
                                                f"line {region.begin} is not closed")
            if marker is not None:
                raise MarkerError(path, number, f"{marker!r} inside the SOLUTION region opened at "
                                                f"line {region.begin}")
            region.lines.append((number, line.rstrip("\r\n")))
            continue

        # Outside any region.
        if marker == BEGIN_STUB:
            if not follows_region:
                raise MarkerError(path, number, f"{BEGIN_STUB!r} must come directly after an "
                                                f"{END_SOLUTION!r} line")
            region = pending_default[0]
            region.stub_begin = number
            pending_default = None
            in_stub = True
            continue
        if pending_default is not None:
            finish_default(*pending_default)
            pending_default = None
        if marker == BEGIN_SOLUTION:
            region = Region(begin=number, end=-1, function=owners.get(number))
            region_indent = _indent(line)
            continue
        if marker == END_SOLUTION:
            raise MarkerError(path, number, f"{END_SOLUTION!r} without a matching "
                                            f"{BEGIN_SOLUTION!r}")
        if marker == END_STUB:
            raise MarkerError(path, number, f"{END_STUB!r} without a matching {BEGIN_STUB!r}")
        out.append(line)
        outside.append((number, line.rstrip("\r\n")))

    if in_stub:
        raise MarkerError(path, region.stub_begin, f"{BEGIN_STUB!r} is never closed")
    if region is not None:
        raise MarkerError(path, region.begin, f"{BEGIN_SOLUTION!r} is never closed")
    if pending_default is not None:
        finish_default(*pending_default)

    result = "".join(out)
    try:
        ast.parse(result)
    except SyntaxError as err:
        raise MarkerError(path, err.lineno or 0, f"the student version is not valid Python "
                                                 f"({err.msg}, line {err.lineno} of the output); "
                                                 "check the STUB block's indentation") from None
    return Stripped(text=result, regions=regions, outside=outside)


def find_markers(text):
    """(line number, line) of every line that carries something marker-like."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if _marker(line) is not None or MARKER_ANYWHERE.search(line):
            found.append((number, line.strip()))
    return found
