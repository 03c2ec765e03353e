"""The marker processor: solution regions become stubs; malformed markers stop the release."""

import ast
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the release package, also under a bare `pytest`

from release.markers import MarkerError, find_markers, strip_solutions  # noqa: E402

STUDENT_FUNCTIONS = ["Diffusion.__init__", "q_sample", "p_loss", "forward", "p_sample",
                     "p_sample_loop", "sample"]


def src(text):
    return textwrap.dedent(text).lstrip("\n")


def test_region_with_stub_is_replaced_by_the_uncommented_stub_at_its_indentation():
    out = strip_solutions(src("""
        def f(x):
            \"\"\"Doc.\"\"\"
            # BEGIN SOLUTION
            return x + 1
            # END SOLUTION
            # BEGIN STUB
            # # TODO: add one
            #
            # raise NotImplementedError("f: add one")
            # END STUB
        """), "m.py")
    assert out.text == src("""
        def f(x):
            \"\"\"Doc.\"\"\"
            # TODO: add one

            raise NotImplementedError("f: add one")
        """)
    assert [(r.begin, r.end, r.function) for r in out.regions] == [(3, 5, "f")]
    assert out.regions[0].lines == [(4, "    return x + 1")]


def test_region_without_stub_gets_a_default_raise_naming_the_function():
    out = strip_solutions(src("""
        class Model:
            def __init__(self):
                self.a = 1
                # BEGIN SOLUTION
                self.b = 2
                # END SOLUTION

            def step(self):
                # BEGIN SOLUTION
                return self.b
                # END SOLUTION
        """), "m.py")
    assert '        raise NotImplementedError("Model.__init__: not implemented")\n' in out.text
    assert '        raise NotImplementedError("step: not implemented")\n' in out.text
    assert "self.b" not in out.text
    assert "self.a = 1" in out.text


def test_file_without_markers_comes_out_unchanged():
    text = (ROOT / "solutions" / "unet.py").read_text()
    assert strip_solutions(text, "solutions/unet.py").text == text


@pytest.mark.parametrize("body, line, words", [
    ("# BEGIN SOLUTION\nx = 1\n# BEGIN SOLUTION\n# END SOLUTION\n", 3, "nested"),
    ("x = 1\n# END SOLUTION\n", 2, "without a matching"),
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n", 2, "never closed"),
    ("def f():\n    return 1\n# BEGIN STUB\n# x = 1\n# END STUB\n", 3, "directly after"),
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n\n    # BEGIN STUB\n"
     "    # return 2\n    # END STUB\n", 6, "directly after"),
    ("def f():\n    # BEGIN SOLUTON\n    return 1\n", 2, "unknown marker"),
    ("def f():\n    return 1\n    # END STUBS\n", 3, "unknown marker"),
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n    # BEGIN STUB\n"
     "    # BEGIN SOLUTION\n    # END STUB\n", 6, "inside the STUB"),
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n    # BEGIN STUB\n"
     "    raise NotImplementedError\n    # END STUB\n", 6, "must start with '# '"),
    ("def f():\n    return 1\n# END STUB\n", 3, "without a matching"),
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n  # END SOLUTION\n", 4, "not indented like"),
    ("# BEGIN SOLUTION\nX = 1\n# END SOLUTION\n", 1, "outside any function"),
])
def test_malformed_markers_stop_with_file_and_line(body, line, words):
    with pytest.raises(MarkerError) as err:
        strip_solutions(body, "pkg/m.py")
    assert str(err.value).startswith(f"pkg/m.py:{line}: ")
    assert words in str(err.value)


def test_stub_that_breaks_the_syntax_is_reported_with_the_file():
    body = ("def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n    # BEGIN STUB\n"
            "    # return (\n    # END STUB\n")
    with pytest.raises(MarkerError, match=r"^pkg/m.py:\d+: the student version is not valid"):
        strip_solutions(body, "pkg/m.py")


def test_find_markers_sees_markers_anywhere_in_a_line():
    assert [n for n, _ in find_markers("a\nx = 1  # END SOLUTION\n#BEGIN STUB\nok\n")] == [2, 3]


def _student_module():
    text = (ROOT / "solutions" / "diffusion.py").read_text()
    stripped = strip_solutions(text, "solutions/diffusion.py")
    namespace = {"__name__": "student_diffusion"}
    exec(compile(stripped.text, "assignment/diffusion.py", "exec"), namespace)  # noqa: S102
    return stripped, namespace


def test_contract_regions_are_exactly_the_student_functions():
    stripped, _ = _student_module()
    assert [r.function for r in stripped.regions] == STUDENT_FUNCTIONS
    assert all(r.stub_begin is not None for r in stripped.regions)


@pytest.mark.parametrize("function", STUDENT_FUNCTIONS)
def test_every_student_function_raises_not_implemented_naming_itself(function):
    _, ns = _student_module()
    diffusion = ns["Diffusion"]
    import torch

    x = torch.zeros(2, 1, 4, 4)
    t = torch.zeros(2, dtype=torch.long)
    calls = {
        "Diffusion.__init__": lambda: diffusion(torch.nn.Identity(), image_size=4, channels=1,
                                                timesteps=5),
        "q_sample": lambda: diffusion.q_sample(None, x, t, x),
        "p_loss": lambda: diffusion.p_loss(None, x, t, x),
        "forward": lambda: diffusion.forward(_Shape(), x),
        "p_sample": lambda: diffusion.p_sample(None, x, t, 0),
        "p_sample_loop": lambda: diffusion.p_sample_loop(None, x),
        "sample": lambda: diffusion.sample(None, 2),
    }
    with pytest.raises(NotImplementedError) as err:
        calls[function]()
    assert str(err.value).startswith(f"{function}: ")


class _Shape:
    """Just enough of a Diffusion for forward's given shape check to pass."""

    channels, image_size = 1, 4


def test_given_functions_are_identical_to_the_reference():
    stripped, _ = _student_module()
    staff = ast.parse((ROOT / "solutions" / "diffusion.py").read_text())
    student = ast.parse(stripped.text)

    def defs(tree):
        out = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                out[node.name] = ast.dump(node)
        return out

    given = ["extract", "cosine_schedule", "linear_schedule", "noise_like", "q_posterior",
             "normalize", "unnormalize"]
    for name in given:
        assert defs(student)[name] == defs(staff)[name], name
