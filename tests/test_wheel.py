"""The package as a user installs it: a wheel, not the source tree, run from a folder outside the repository.

The wheel is built offline and unpacked into a throwaway folder that goes first on PYTHONPATH, so it
reuses this environment's dependencies (torch, timm, ...) but none of the repository's files: the
presets must come from inside the package, and the console script from the wheel's metadata.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# Runs the `medgrain` console script as the wheel declares it (entry_points.txt), first checking that
# both the script and the package come from the unpacked wheel rather than the source tree.
CONSOLE_SCRIPT = """
import sys
from importlib.metadata import entry_points
from pathlib import Path
import medgrain
(ep,) = entry_points(group="console_scripts", name="medgrain")
site = Path(sys.argv.pop(1)).resolve()
for where in (Path(medgrain.__file__), Path(ep.dist.locate_file("medgrain"))):
    if site not in where.resolve().parents:
        sys.exit(f"not from the wheel: {where}")
sys.exit(ep.load()())
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    # Build from a copy, so the build's scratch folders (build/, *.egg-info) never touch the repository.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "medgrain", src / "medgrain", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(wheels), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("medgrain-*.whl")
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    return site


def medgrain_cli(site: Path, cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", CONSOLE_SCRIPT, str(site), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_wheel_carries_every_data_file(site):
    """Presets, prompt sets, anything the code reads next to itself: a file pyproject's package-data
    misses is absent from an installed medgrain."""
    def data_files(root):
        return sorted(str(p.relative_to(root)) for p in (root / "medgrain").rglob("*")
                      if p.is_file() and p.suffix not in (".py", ".pyc"))

    shipped = data_files(REPO)
    assert "medgrain/configs/tiny-mgll.yaml" in shipped and data_files(site) == shipped


def test_installed_pretrain_finds_its_preset(site, tmp_path):
    overrides = ["data.manifest=data/manifest.jsonl", "data.synthetic.n=40", "data.synthetic.size=32",
                 "model.overrides.image.image_size=32", "train.output_dir=run", "train.epochs=1",
                 "train.batch_size=8", "train.stop_after_steps=2", "train.log_every=1", "train.progress=false",
                 "train.tensorboard=false"]
    proc = medgrain_cli(site, tmp_path, "pretrain", "--config", "tiny-mgll", *overrides)
    assert "last checkpoint:" in proc.stdout
    assert (tmp_path / "run" / "checkpoints" / "last" / "model.safetensors").is_file()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows if r["split"] == "train") == 2


def test_installed_quick_demo_runs(site, tmp_path):
    # What a user types after `pip install medgrain` (about 1.5 minutes on 2 CPU cores: the slow part).
    medgrain_cli(site, tmp_path, "demo", "--quick", "--out", "demo")
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert results["demo"]["quick"] is True and "mgll" in results["methods"]
    assert (tmp_path / "demo" / "report.html").is_file()
