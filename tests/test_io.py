"""atomic_write and replace_directory: a file or folder appears whole or not at all."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medgrain.data.manifest import ManifestError, read_manifest, write_manifest
from medgrain.io import atomic_directory, atomic_write, replace_directory

REPO = Path(__file__).resolve().parents[1]


def test_text_bytes_and_callback_land_whole(tmp_path):
    target = tmp_path / "new" / "folder" / "out.json"
    assert atomic_write(target, '{"a": 1}') == target and target.read_text() == '{"a": 1}'
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    atomic_write(target, lambda tmp: tmp.write_text("from a writer that takes a file name"))
    assert target.read_text() == "from a writer that takes a file name"
    assert os.listdir(target.parent) == ["out.json"]  # no temporary file left behind


def test_a_write_that_raises_leaves_the_old_file(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")

    def dies_half_way(tmp):
        tmp.write_text("half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, dies_half_way)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]


def test_a_process_killed_mid_write_leaves_the_old_file(tmp_path):
    """No exception handler runs when the process dies: the old file must still be whole."""
    target = tmp_path / "index.json"
    target.write_text("old")
    script = textwrap.dedent(f"""
        import os
        from medgrain.io import atomic_write

        def killed(tmp):
            with open(tmp, "w") as f:
                f.write("half of the new")
                f.flush()
            os._exit(9)

        atomic_write({str(target)!r}, killed)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert subprocess.run([sys.executable, "-c", script], env=env, timeout=60).returncode == 9
    assert target.read_text() == "old"


def test_a_manifest_that_fails_validation_keeps_the_old_one(tmp_path):
    path = tmp_path / "manifest.jsonl"
    record = {"id": "a", "image": "a.png", "texts": {"abnormality": "normal"}, "split": "train"}
    write_manifest([record], path)
    before = path.read_text()
    with pytest.raises(ManifestError, match="duplicate id 'b'"):
        write_manifest([{**record, "id": "b"}, {**record, "id": "b"}], path)
    assert path.read_text() == before and [r.id for r in read_manifest(path).records] == ["a"]
    assert sorted(os.listdir(tmp_path)) == ["manifest.jsonl"]


def test_replace_directory_swaps_whole_folders(tmp_path):
    target = tmp_path / "last"
    target.mkdir()
    (target / "weights").write_text("old")
    (tmp_path / "last.old").mkdir()  # stale, left by a run killed between the two renames
    staging = tmp_path / "last.staging"
    staging.mkdir()
    (staging / "weights").write_text("new")
    assert replace_directory(staging, target) == target
    assert (target / "weights").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["last"]
    fresh = tmp_path / "fresh.staging"
    fresh.mkdir()
    replace_directory(fresh, tmp_path / "fresh")
    assert (tmp_path / "fresh").is_dir() and not fresh.exists()


def test_atomic_directory_builds_whole_or_not_at_all(tmp_path):
    target = tmp_path / "best"
    atomic_directory(target, lambda staging: (staging.mkdir(), (staging / "weights").write_text("first")))
    (tmp_path / "best.staging").mkdir()  # left by a run killed while building

    def dies(staging):
        staging.mkdir()
        (staging / "weights").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_directory(target, dies)
    assert (target / "weights").read_text() == "first" and sorted(os.listdir(tmp_path)) == ["best"]
    atomic_directory(target, lambda staging: (staging.mkdir(), (staging / "weights").write_text("second")))
    assert (target / "weights").read_text() == "second" and sorted(os.listdir(tmp_path)) == ["best"]
