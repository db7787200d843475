"""A non-editable install into a clean venv: radio and sim import as swarmfl.radio/swarmfl.sim."""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_into_clean_venv_without_generic_top_level_names(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("swarmfl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert "sim" not in tops and "radio" not in tops and "scenarios" not in tops
    assert "swarmfl/scenarios/quickstart.toml" in names
    assert "swarmfl/py.typed" in names
    # every sub-package of the source tree ships (a folder left out of pyproject would not)
    for init in (ROOT / "swarmfl").glob("*/__init__.py"):
        assert f"swarmfl/{init.parent.name}/__init__.py" in names
    assert {"swarmfl/radio/__init__.py", "swarmfl/sim/__init__.py"} <= set(names)

    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    python = env / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = (
        "import importlib.util, importlib.resources, swarmfl, swarmfl.radio, swarmfl.sim;"
        "assert importlib.util.find_spec('sim') is None;"
        "assert importlib.util.find_spec('radio') is None;"
        "print(swarmfl.radio.__file__); print(swarmfl.sim.__file__);"
        "print((importlib.resources.files('swarmfl.scenarios') / 'quickstart.toml').is_file())"
    )
    done = subprocess.run(
        [str(python), "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    radio_path, sim_path, bundled = done.stdout.split()
    assert "site-packages/swarmfl/radio/" in radio_path
    assert "site-packages/swarmfl/sim/" in sim_path
    assert bundled == "True"
