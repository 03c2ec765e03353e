"""Build the student side of a release: assignment/, dist/student.zip, dist/autograder.zip.

Everything here is deterministic: files are visited in sorted order, zip entries are sorted and
carry a fixed timestamp (1980-01-01) and fixed permissions (0644, 0755 for executables), so two
builds of the same tree are byte-identical.
"""

import hashlib
import importlib.util
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the release is a staff tool, 3.11+ is fine
    tomllib = None

from release.markers import MarkerError, find_markers, strip_solutions
from release.tex import strip_tex_solutions

MANIFEST = Path(__file__).with_name("manifest.toml")
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class ReleaseError(Exception):
    """A release cannot be built; the message says what to fix."""


# ---------------------------------------------------------------- manifest and globs


def glob_regex(pattern):
    """Compile a path glob: `*` and `?` stay inside one folder, `**/` spans any number of them."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matches(path, patterns):
    """True if the posix relative `path` matches any glob in `patterns`."""
    return any(glob_regex(p).match(path) for p in patterns)


def load_manifest(path=MANIFEST):
    """Read and check the manifest; a missing key or a bad value is a ReleaseError."""
    if tomllib is None:
        raise ReleaseError("python -m release needs Python 3.11 or newer (for tomllib)")
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ReleaseError(f"cannot read the release manifest {path}: {err}") from None
    required = {
        "assignment": ["source", "output", "strip", "copy", "exclude"],
        "student_zip": ["path", "include", "readme", "exclude"],
        "autograder_zip": ["path", "package"],
        "leaks": ["forbidden_dirs", "hidden_content", "min_line_chars", "allow_shared"],
    }
    for section, keys in required.items():
        for key in keys:
            if key not in data.get(section, {}):
                raise ReleaseError(f"{path}: [{section}] needs the key {key!r}")
    for section in ("assignment", "student_zip"):
        for key in ("strip", "copy", "exclude", "include"):
            for p in data[section].get(key, []):
                if p.startswith("/") or ".." in Path(p).parts:
                    raise ReleaseError(f"{path}: [{section}].{key} entry {p!r} must be a path "
                                       "inside the repository")
    return data


def files_under(folder):
    """Sorted posix paths (relative to `folder`) of the regular files under it."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def sha256(data):
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- assignment/


@dataclass
class StrippedFile:
    """A solutions/ file that went through the marker processor."""

    source: str  # repo-relative path
    original: str
    result: object  # markers.Stripped


@dataclass
class Assignment:
    """What build_assignment produced: files (relative path -> bytes) and where they came from."""

    files: dict = field(default_factory=dict)
    stripped: list = field(default_factory=list)  # StrippedFile
    excluded: list = field(default_factory=list)
    notebooks: list = field(default_factory=list)  # made by `otter assign` (release/lab.py)


def build_assignment(root, manifest):
    """Generate the student tree from the staff source, in memory.

    Raises MarkerError for a malformed marker, ReleaseError for a file that no manifest rule
    covers or a copied file that carries markers.
    """
    spec = manifest["assignment"]
    source = Path(root) / spec["source"]
    if not source.is_dir():
        raise ReleaseError(f"the source folder {spec['source']}/ does not exist")
    built = Assignment()
    for rel in files_under(source):
        repo_rel = f"{spec['source']}/{rel}"
        if matches(rel, spec["exclude"]):
            built.excluded.append(rel)
            continue
        data = (source / rel).read_bytes()
        if matches(rel, spec.get("otter", [])):  # Otter master notebook -> student notebook
            from release import lab

            built.files[rel] = lab.assign(source / rel)
            built.notebooks.append(rel)
        elif matches(rel, spec["strip"]):
            text = data.decode("utf-8")
            # LaTeX (the written part) has its own comment syntax for the same markers.
            strip = strip_tex_solutions if rel.endswith(".tex") else strip_solutions
            result = strip(text, repo_rel)
            built.stripped.append(StrippedFile(repo_rel, text, result))
            built.files[rel] = result.text.encode("utf-8")
        elif matches(rel, spec["copy"]):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = ""
            found = find_markers(text)
            if found:
                line, content = found[0]
                raise MarkerError(repo_rel, line, f"{content!r} in a file that is copied "
                                                  "verbatim; only files matched by "
                                                  "[assignment].strip may hold markers")
            built.files[rel] = data
        else:
            raise ReleaseError(f"{repo_rel} is matched by none of [assignment].strip, copy or "
                               "exclude in release/manifest.toml: say whether students get it")
    return built


def write_tree(files, dest, keep=()):
    """Make folder `dest` hold exactly `files` (relative path -> bytes); remove anything else
    except the files matching the globs in `keep` (a training run's results/, __pycache__)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for rel in files_under(dest):
        if rel not in files and not matches(rel, keep):
            (dest / rel).unlink()
    for folder in sorted((p for p in dest.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    for rel, data in sorted(files.items()):
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)


# ---------------------------------------------------------------- zips


@dataclass(frozen=True)
class Entry:
    """One file of a zip: its name inside, its bytes, whether it is executable, and its origin."""

    name: str
    data: bytes
    executable: bool = False
    origin: str = ""


def write_zip(path, entries):
    """Write a reproducible zip: sorted names, fixed timestamps and permissions, no folders."""
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ReleaseError(f"{path}: two files would land at {duplicates[0]!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for entry in sorted(entries, key=lambda e: e.name):
            info = zipfile.ZipInfo(entry.name, date_time=ZIP_DATE)
            info.create_system = 3  # unix, so the permission bits below are honoured
            mode = 0o755 if entry.executable else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, entry.data, compresslevel=9)


def _is_executable(path):
    return bool(Path(path).stat().st_mode & stat.S_IXUSR)


def student_entries(root, manifest, assignment_files):
    """Entries of the student kit: the generated assignment/ plus the listed repo paths."""
    spec = manifest["student_zip"]
    out_name = manifest["assignment"]["output"]
    root = Path(root)
    entries = []
    for item in spec["include"]:
        item = item.rstrip("/")
        if item == out_name:  # the freshly generated tree, never the committed copy
            for rel, data in sorted(assignment_files.items()):
                name = f"{out_name}/{rel}"
                if not matches(name, spec["exclude"]):
                    src = root / manifest["assignment"]["source"] / rel
                    executable = src.is_file() and _is_executable(src)
                    entries.append(Entry(name, data, executable, f"generated {name}"))
            continue
        path = root / item
        if path.is_file():
            candidates = [(item, path)]
        elif path.is_dir():
            candidates = [(f"{item}/{rel}", path / rel) for rel in files_under(path)]
        else:
            raise ReleaseError(f"[student_zip].include names {item!r}, which does not exist")
        for name, src in candidates:
            if not matches(name, spec["exclude"]):
                entries.append(Entry(name, src.read_bytes(), _is_executable(src), name))
    readme = root / spec["readme"]
    if not readme.is_file():
        raise ReleaseError(f"the handout {spec['readme']} does not exist")
    entries.append(Entry("README.md", readme.read_bytes(), False, spec["readme"]))
    return entries


def load_autograder_files(root, manifest):
    """The autograder's (source path in repo -> path in zip) list from autograder/package.py."""
    rel = manifest["autograder_zip"]["package"]
    path = Path(root) / rel
    if not path.is_file():
        raise ReleaseError(f"{rel} does not exist yet, so dist/autograder.zip cannot be built "
                           "(the grader's package list lives there)")
    spec = importlib.util.spec_from_file_location("_release_autograder_package", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - any failure is reported with the file's name
        raise ReleaseError(f"{rel} failed to load: {type(err).__name__}: {err}") from None
    files = getattr(module, "FILES", None)
    if callable(getattr(module, "files", None)):
        files = module.files()
    if not isinstance(files, dict) or not files:
        raise ReleaseError(f"{rel} must define FILES, a non-empty dict (source path in repo -> "
                           "path in zip)")
    return files


def autograder_entries(root, manifest):
    """Entries of Gradescope's autograder zip: setup.sh and run_autograder at the root."""
    root = Path(root)
    exclude = manifest["student_zip"]["exclude"]
    entries = []
    for source, target in sorted(load_autograder_files(root, manifest).items()):
        src = root / source
        if src.is_file():
            entries.append(Entry(target, src.read_bytes(), _is_executable(src)
                                 or target in ("setup.sh", "run_autograder"), source))
        elif src.is_dir():
            for rel in files_under(src):
                if not matches(rel, exclude) and not matches(f"{source}/{rel}", exclude):
                    entries.append(Entry(f"{target.rstrip('/')}/{rel}",
                                         (src / rel).read_bytes(),
                                         _is_executable(src / rel), f"{source}/{rel}"))
        else:
            raise ReleaseError(f"autograder/package.py lists {source!r}, which does not exist")
    names = {e.name for e in entries}
    missing = [n for n in ("setup.sh", "run_autograder") if n not in names]
    if missing:
        raise ReleaseError(f"the autograder zip has no {' or '.join(missing)} at its root "
                           "(Gradescope needs both); fix autograder/package.py")
    return entries
