"""attncheck as others install it: one `attncheck` namespace that shadows nothing, targets from entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path, pythonpath: list[Path], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTNCHECK_", "HYPOTHESIS_", "PYTHON"))}
    env["CI"] = "true"
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m pip ARGS`` in this interpreter, its output captured, within 10 minutes."""
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from this checkout, as `pip install attncheck` would install it."""
    out = tmp_path_factory.mktemp("wheel")
    built = _pip("wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT))
    if built.returncode != 0:
        pytest.fail(f"building the wheel failed: {built.stderr[-2000:]}")
    return next(out.glob("attncheck-*.whl"))


def test_the_wheel_holds_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"attncheck"}, top
    for module in (
        "reference/attention.py",
        "properties/contract.py",
        "plugin.py",
        "adapters/pytorch.py",
        "bench/statistics.py",
        "_pytestplugin.py",
        "cli.py",
        "properties/verify.ini",
        "benchmarks/bench.ini",
    ):
        assert f"attncheck/{module}" in names, module
    assert any(n.startswith("attncheck/benchmarks/baselines/") and n.endswith(".json") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "attncheck = attncheck._pytestplugin" in text and "attncheck = attncheck.cli:main" in text


USER_PACKAGE = "MARK = 'the user\\'s own {name}'\n"
USER_TEST = """
import properties, reference, benchmarks

def test_my_packages_are_mine():
    assert properties.MARK == "the user's own properties"
    assert reference.MARK == "the user's own reference"
    assert benchmarks.MARK == "the user's own benchmarks"
"""


def test_a_wheel_install_beside_the_users_own_packages(wheel: Path, tmp_path: Path) -> None:
    """A project with its own properties/, reference/ and benchmarks/ packages uses attncheck as installed."""
    site = tmp_path / "site"
    installed = _pip("install", "--quiet", "--no-deps", "--target", str(site), str(wheel))
    assert installed.returncode == 0, installed.stderr
    project = tmp_path / "project"
    for name in ("properties", "reference", "benchmarks"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(USER_PACKAGE.format(name=name))
    (project / "test_mine.py").write_text(USER_TEST)
    path = [site, project]  # the user's folder is importable, as with `python -m` or pytest's rootdir

    where = run(["-c", "import attncheck.plugin as p; print(p.__file__)"], project, path)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr

    mine = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_mine.py"], project, path)
    assert mine.returncode == 0, mine.stdout + mine.stderr

    verify = run(
        [
            "-m",
            "attncheck",
            "verify",
            "--property",
            "rows_sum_to_one",
            "--max-examples",
            "3",
            "-q",
            "--json",
            str(tmp_path / "r.json"),
        ],
        project,
        path,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert {t["name"]: t["properties"][0]["status"] for t in report["targets"]} == {
        "reference": "passed",
        "torch-sdpa": "passed",
    }

    plugin = run(
        [
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--pyargs",
            "attncheck.properties",
            "--attncheck-property",
            "rows_sum_to_one",
            "--attncheck-max-examples",
            "3",
        ],
        project,
        path,
    )
    assert plugin.returncode == 0 and "attncheck conformance" in plugin.stdout, plugin.stdout + plugin.stderr


STUB_MODULE = """
from attncheck import Capabilities, Target
from torch.nn.functional import scaled_dot_product_attention


def make_target():
    caps = Capabilities(dropout=True)
    return Target("stub-flash", scaled_dot_product_attention, caps, "stubkernels: torch SDPA under another name")


def make_nothing():
    return 42
"""


def test_a_distribution_registers_targets_by_entry_point(tmp_path: Path) -> None:
    """A stub distribution (a dist-info with entry_points.txt on the path, as pip leaves it) adds targets."""
    (tmp_path / "stubkernels.py").write_text(STUB_MODULE)
    info = tmp_path / "stubkernels-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stubkernels\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[attncheck.targets]\nstub-flash = stubkernels:make_target\nstub-broken = stubkernels:make_nothing\n"
    )
    path = [tmp_path, ROOT]
    listed = run(["-m", "attncheck", "targets"], tmp_path, path)
    assert listed.returncode == 0, listed.stderr
    assert "stub-flash" in listed.stdout and "stubkernels" in listed.stdout
    assert "stub-broken" in listed.stdout and "not a Target" in listed.stdout

    verify = run(
        [
            "-m",
            "attncheck",
            "verify",
            "stub-flash",
            "--property",
            "mask_semantics",
            "--max-examples",
            "3",
            "-q",
            "--json",
            str(tmp_path / "r.json"),
        ],
        tmp_path,
        path,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    target = json.loads((tmp_path / "r.json").read_text())["targets"][0]
    assert target["name"] == "stub-flash" and target["properties"][0]["status"] == "passed"

    broken = run(["-m", "attncheck", "verify", "stub-broken"], tmp_path, path)
    assert broken.returncode == 2 and "not a Target" in broken.stderr, broken.stderr
    typo = run(["-m", "attncheck", "verify", "stub-flsh"], tmp_path, path)
    assert typo.returncode == 2 and "did you mean 'stub-flash'" in typo.stderr, typo.stderr


def test_module_targets_resolve_from_the_current_directory(tmp_path: Path) -> None:
    """`attncheck verify mykernel:attention` next to mykernel.py works without PYTHONPATH=."""
    (tmp_path / "mykernel.py").write_text(
        "from attncheck.reference.attention import scaled_dot_product_attention as attention\n"
    )
    env_path = [ROOT] if not (ROOT / "attncheck").is_dir() else []
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from attncheck.cli import main; sys.exit(main())",
            "verify",
            "mykernel:attention",
            "--property",
            "rows_sum_to_one",
            "--max-examples",
            "2",
            "-q",
        ],
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            "CI": "true",
            "PYTHONPATH": os.pathsep.join(str(p) for p in env_path),
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    typo = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from attncheck.cli import main; sys.exit(main())",
            "verify",
            "mykernel:atention",
        ],
        cwd=tmp_path,
        env={**os.environ, "CI": "true"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert typo.returncode == 2 and "did you mean mykernel:attention" in typo.stderr, typo.stderr
