"""The layer library with torch alone: `import shc_kernels`, the layer API, `shc info` and
`shc check` run where none of the extras' packages (nor triton, nor numpy) can be imported, and a
command that needs an extra says in one line which one to install."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Every package of every extra, by import name, plus triton (optional for the library).
BLOCKED = ("torchvision", "tqdm", "numpy", "sklearn", "torchattacks", "matplotlib", "triton", "onnx",
           "onnxruntime", "onnxscript")  # fmt: skip

PRELUDE = textwrap.dedent(
    f"""
    import sys
    BLOCKED = {BLOCKED!r}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    """
)


def run_without_extras(code: str) -> subprocess.CompletedProcess:
    # torch itself warns once when numpy is missing; that warning is torch's, not ours.
    env = dict(os.environ, PYTHONWARNINGS="ignore:Failed to initialize NumPy")
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip


def test_the_block_works():
    proc = run_without_extras("import torchvision")
    assert proc.returncode != 0 and "blocked by the test" in proc.stderr


def test_layer_api_works_with_torch_alone():
    proc = run_without_extras(
        """
        import torch
        import shc_kernels as shc
        from shc_kernels import reference
        blocked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not blocked, blocked
        torch.manual_seed(0)
        layer = shc.SHCConv2d(4, 6, 3, padding=1)
        x = torch.randn(2, 4, 8, 8, requires_grad=True)
        y = layer(x)
        y.square().sum().backward()
        p = [layer.weight, layer.bias, layer.hyper.fc1.weight, layer.hyper.fc1.bias,
             layer.hyper.fc2.weight, layer.hyper.fc2.bias]
        ref = reference.shc_conv2d(x, *p, padding=1)
        assert torch.allclose(y, ref, atol=1e-5), (y - ref).abs().max()
        m = shc.statistical_map(x, *p[2:], (3, 3))
        assert m.shape == (2, 3, 3)
        y2 = shc.modulated_conv2d(x, layer.weight, m, layer.bias, padding=1)
        assert torch.allclose(y2, ref, atol=1e-5)
        net = shc.convert(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1)))
        assert isinstance(net[0], shc.SHCConv2d)
        assert "cpu" in shc.available_backends(), shc.available_backends()
        print("ok")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")


def test_shc_info_and_check_work_with_torch_alone():
    proc = run_without_extras(
        """
        from shc_kernels.cli import main
        assert main(["info"]) == 0
        assert main(["check", "--quick"]) == 0
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "triton      not installed" in proc.stdout
    assert "PASS" in proc.stdout


@pytest.mark.parametrize(
    "command, extra",
    [
        (["train", "--help"], "train"),
        (["attack", "--help"], "robustness"),
        (["study", "--help"], "robustness"),
        (["demo", "--help"], "robustness"),
    ],
)
def test_a_command_that_needs_an_extra_names_it_in_one_line(command, extra):
    proc = run_without_extras(f"from shc_kernels.cli import main; sys.exit(main({command!r}))")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"pip install 'shc_kernels[{extra}]'" in lines[0]


def test_the_paper_models_name_their_extra():
    proc = run_without_extras("import shc_kernels as shc; shc.models.plain10")
    assert proc.returncode != 0
    assert "MissingExtra" in proc.stderr and "pip install 'shc_kernels[train]'" in proc.stderr


def test_old_import_paths_are_the_research_modules():
    import shc_kernels as shc
    from shc_kernels import research
    from shc_kernels.attacks import fgsm
    from shc_kernels.models import plain10

    assert shc.models is research.models and shc.attacks is research.attacks
    assert plain10 is research.models.plain10 and fgsm is research.attacks.fgsm


def test_the_library_never_imports_the_application_or_the_commands():
    """Imports point one way: shc_kernels.research and shc_kernels.cli import the library, never
    the reverse (shc.models/shc.attacks are loaded lazily on first use)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import shc_kernels, sys; print(sorted(sys.modules))"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    loaded = eval(proc.stdout)
    assert not [m for m in loaded if m.startswith(("shc_kernels.research", "shc_kernels.cli"))]
    lib = Path(__file__).resolve().parents[1] / "shc_kernels"
    if not lib.exists():
        pytest.skip("not a checkout")
    # __main__.py is `python -m shc_kernels`, the command itself; models.py and attacks.py keep the old
    # import paths as names for the research modules (test_old_import_paths_are_the_research_modules).
    outside = ("__main__.py", "models.py", "attacks.py")
    library = [p for p in lib.glob("*.py") if p.name not in outside] + list((lib / "triton").glob("*.py"))
    for path in library:
        text = path.read_text()
        for bad in ("from .research", "from .cli", "from ..research", "from ..cli", "shc_kernels.research",
                    "shc_kernels.cli"):  # fmt: skip
            if bad in text and not (path.name == "__init__.py" and bad == "shc_kernels.research"):
                pytest.fail(f"{path.relative_to(lib.parent)} imports the application or the commands ({bad})")
    research = lib / "research"
    for path in research.rglob("*.py"):
        text = path.read_text()
        assert "from ..cli" not in text and "shc_kernels.cli" not in text, path


def test_the_wheel_requires_torch_alone():
    setup_py = Path(__file__).resolve().parents[1] / "setup.py"
    if not setup_py.exists():
        pytest.skip("setup.py is not here (installed wheel)")
    module = runpy.run_path(str(setup_py), run_name="setup_under_test")
    seen = {}
    scope = module["main"].__globals__  # run_path returns a copy; main() looks names up in its own globals
    scope["setup"] = lambda **kw: seen.update(kw)
    scope["_extensions"] = lambda: ([], {})
    module["main"]()
    assert [r.split("=")[0] for r in seen["install_requires"]] == ["torch"], seen["install_requires"]
    extras = seen["extras_require"]
    assert set(extras) >= {"train", "robustness", "all"}
    assert "torchvision" in extras["train"] and "torchattacks" in extras["robustness"]
    assert "onnxruntime" in extras["export"]
    assert set(extras["all"]) >= set(extras["robustness"]) | set(extras["export"])
    from shc_kernels.research import _PIP_NAMES, EXTRAS

    for name, modules in EXTRAS.items():  # the import names the code checks match the pip names
        assert {_PIP_NAMES.get(m, m) for m in modules} <= set(extras[name]), name
