"""Reliability corpus (issue 11): bad input, generated here, through the real ``medgrain`` entry point.

Every case runs ``medgrain.cli.main`` in a child process (forked once medgrain is imported, so a case
costs no interpreter start), and a crash is seen as a crash: a signal (SIGSEGV) or a traceback fails
the case. The outcome asserted is a clear message naming the file (and line and field where there is
one) with exit status 1, or, under ``on_error=skip``, a run that finishes and reports exactly the bad
records, by reason. Kill -9 and resume, and a kill during a checkpoint write, run here too.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import traceback
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from _images import dicom_without_pixels
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
N_GOOD = 8  # good train records beside the bad ones; one batch holds them all


def run_cli(argv: list[str], tmp: Path, prepare=None) -> tuple[int | str, str]:
    """``medgrain.cli.main(argv)`` in a forked child: ``(exit status or "signal N", stderr)``."""
    from medgrain import cli

    err = tmp / f"stderr-{time.monotonic_ns()}.txt"
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        code = 1
        try:
            fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), write_through=True)
            # One thread, and the thread helper told so (it honours OMP_NUM_THREADS): a child forked from a
            # parent whose OpenMP pool has run (earlier tests in the same pytest process) deadlocks in its
            # first parallel region otherwise (libgomp is not fork-safe).
            os.environ["OMP_NUM_THREADS"] = "1"
            torch.set_num_threads(1)
            if prepare:
                prepare()
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # what the interpreter would print: a traceback
            traceback.print_exc()
            code = 1
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    outcome = os.WEXITSTATUS(status) if os.WIFEXITED(status) else f"signal {os.WTERMSIG(status)}"
    return outcome, err.read_text(errors="replace")


def assert_clear(outcome, stderr: str, *needles: str) -> None:
    assert outcome == 1, (outcome, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    for needle in needles:
        assert needle in stderr, (needle, stderr[-3000:])


# ----------------------------------------------------------------------------- bad files


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def with_ihdr_size(png: bytes, width: int, height: int) -> bytes:
    data = bytearray(png)
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def bad_images(folder: Path) -> dict[str, tuple[str, str]]:
    """Bad image files: name -> (file, the reason a skip counts it under)."""
    folder.mkdir(parents=True, exist_ok=True)
    png = png_bytes((np.arange(32 * 32) % 251).astype(np.uint8).reshape(32, 32))
    files = {
        "truncated-png": ("short.png", png[: len(png) // 2], "corrupt image data"),
        "claims-more-pixels": ("claims.png", with_ihdr_size(png, 1024, 1024), "corrupt image data"),
        "zero-byte": ("empty.png", b"", "empty image file"),
        "pixel-bomb": ("bomb.png", with_ihdr_size(png_bytes(np.zeros((8, 8), np.uint8)), 16384, 16384),
                       "image over the pixel limit"),
        "not-an-image": ("text.png", b"this is not a picture\n", "corrupt image data"),
    }
    out = {}
    for case, (name, data, kind) in files.items():
        (folder / name).write_bytes(data)
        out[case] = (name, kind)
    buffer = io.BytesIO()
    np.savez(buffer, image=np.array([[0.0, np.nan], [1.0, 0.5]], np.float32))
    (folder / "nan.npz").write_bytes(buffer.getvalue())
    out["nan-npz"] = ("nan.npz", "non-finite pixel values")
    dicom_without_pixels(folder / "report.dcm")
    out["dicom-without-pixels"] = ("report.dcm", "DICOM without pixel data")
    out["missing-file"] = ("gone.png", "image file not found")
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """One tiny synthetic dataset, its good train records, and the bad files beside them."""
    from medgrain.data.synthetic import generate

    root = tmp_path_factory.mktemp("corpus")
    manifest = generate("cxr", root / "synth", n=24, seed=5, size=32, workers=1)
    records = [json.loads(x) for x in manifest.read_text().splitlines()]
    for r in records:  # paths relative to the corpus folder, where the test manifests are written
        r["image"] = f"synth/{r['image']}"
        for f in r.get("findings", []):
            if f.get("mask"):
                f["mask"] = f"synth/{f['mask']}"
    good = [r for r in records if r["split"] == "train"][:N_GOOD]
    return {"root": root, "good": good, "valid": [r for r in records if r["split"] == "valid"],
            "bad": bad_images(root / "bad"), "template": good[0]}


def write_manifest(path: Path, records: list, extra_lines: list[bytes] = ()) -> Path:
    lines = [json.dumps(r).encode() for r in records] + list(extra_lines)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def record(corpus, rid: str, image: str, **changes) -> dict:
    r = json.loads(json.dumps(corpus["template"]))
    r.update(id=rid, image=image, findings=[], labels=[], **changes)
    return r


def pretrain_args(manifest: Path, out: Path, *overrides: str) -> list[str]:
    return ["pretrain", "--config", "tiny-clip", f"data.manifest={manifest}", "data.synthetic=null",
            f"train.output_dir={out}", "train.epochs=1", f"train.batch_size={N_GOOD}", "train.progress=false",
            "train.tensorboard=false", "train.eval_at_start=false", "train.log_every=1",
            "model.overrides={image: {image_size: 32}}", *overrides]


# ----------------------------------------------------------------------------- manifests and configs


BAD_LINES = {  # case -> (raw line, what the message must say besides the file and line)
    "malformed-json": (b'{"id": "x", "image": null, "split": "train"', "malformed JSON"),
    "not-utf8": (b'{"id": "caf\xe9", "image": null, "split": "train"}', "not UTF-8"),
    "unknown-field": (b'{"id": "x", "image": null, "split": "train", "colour": "red"}', "field 'colour'"),
    "missing-split": (b'{"id": "x", "image": null}', "field 'split'"),
    "bad-split": (b'{"id": "x", "image": null, "split": "training"}', "field 'split'"),
    "empty-text": (b'{"id": "x", "image": null, "split": "train", "texts": {"category": " "}}', "field 'texts'"),
    "not-an-object": (b'["x"]', "expected a JSON object"),
    "duplicate-id": (None, "duplicate id"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_manifest_line_names_file_line_and_field(corpus, tmp_path, case):
    line, needle = BAD_LINES[case]
    first = record(corpus, "a", corpus["good"][0]["image"])
    raw = json.dumps(first).encode() if line is None else line
    path = write_manifest(tmp_path / "m.jsonl", [first], [raw])
    assert_clear(*run_cli(["info", str(path)], tmp_path), f"{path}:2", needle)


def test_csv_and_config_mistakes_are_named(corpus, tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_bytes(b"id,split,report\na,train,fine\nb,train,caf\xe9 au lait\n")
    assert_clear(*run_cli(["info", str(csv)], tmp_path), f"{csv}:3", "field 'report'", "byte 0xE9")
    assert_clear(*run_cli(["info", str(tmp_path / "nope.jsonl")], tmp_path), "manifest not found")
    for name, text, needle in (("key.yaml", b"optim: {lrr: 1}\n", "optim.lrr"),
                               ("tag.yaml", b"optim: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
                               ("bytes.yaml", b"optim: {lr: 1}\n# caf\xe9\n", "not UTF-8")):
        (tmp_path / name).write_bytes(text)
        assert_clear(*run_cli(["pretrain", "--config", str(tmp_path / name)], tmp_path), str(tmp_path / name), needle)


def test_info_skip_reports_every_bad_line(corpus, tmp_path):
    first = record(corpus, "a", corpus["good"][0]["image"])
    lines = [raw if raw is not None else json.dumps(first).encode() for raw, _ in BAD_LINES.values()]
    path = write_manifest(tmp_path / "m.jsonl", [first], lines)
    outcome, _ = run_cli(["info", str(path), "--on-error", "skip", "--json"], tmp_path)
    assert outcome == 0
    from medgrain.data.info import summarize
    from medgrain.data.manifest import read_manifest

    skipped = summarize(read_manifest(path, on_error="skip"))["skipped"]
    assert [s["line"] for s in skipped] == list(range(2, 2 + len(BAD_LINES)))


# ----------------------------------------------------------------------------- images in pretraining


@pytest.mark.parametrize("case", ["truncated-png", "claims-more-pixels", "zero-byte", "pixel-bomb", "not-an-image",
                                  "nan-npz", "dicom-without-pixels", "missing-file"])
def test_bad_image_is_a_clear_error_never_a_crash(corpus, tmp_path, case):
    name, _ = corpus["bad"][case]
    path = write_manifest(corpus["root"] / f"img-{case}.jsonl",
                          corpus["good"] + [record(corpus, "bad", f"bad/{name}")])
    outcome, stderr = run_cli(pretrain_args(path, tmp_path / "run", "data.valid_split=null",
                                            f"train.batch_size={N_GOOD + 1}"), tmp_path)
    assert_clear(outcome, stderr, name)
    if case == "pixel-bomb":
        assert "16384x16384" in stderr and "data.max_image_pixels" in stderr


@pytest.mark.slow
def test_skip_finishes_and_reports_exactly_the_bad_records_by_reason(corpus, tmp_path):
    """The issue's acceptance: one bad record of each kind, data.on_error=skip, and the run reports
    exactly those records, by reason, at its end, in metrics.jsonl and across --resume."""
    bad = [record(corpus, f"bad-{case}", f"bad/{name}") for case, (name, _) in sorted(corpus["bad"].items())]
    lines = [line for case, (line, _) in sorted(BAD_LINES.items()) if line is not None]
    path = write_manifest(corpus["root"] / "all-bad.jsonl", corpus["good"] + bad, lines)
    expected = {kind: 0 for _, kind in corpus["bad"].values()}
    for _, kind in corpus["bad"].values():
        expected[kind] += 1
    from medgrain.data.manifest import read_manifest

    for s in read_manifest(path, on_error="skip").skipped:
        expected[s.kind] = expected.get(s.kind, 0) + 1
    assert sum(expected.values()) == len(bad) + len(lines)

    out = tmp_path / "run"
    # 8 good and 7 loadable bad records (the missing file is left out when the dataset is built):
    # batches of 5 take every one of them in every epoch
    common = ["data.on_error=skip", "data.valid_split=null", "train.batch_size=5", "train.checkpoint_every=1"]
    args = pretrain_args(path, out, *common, "train.epochs=2")
    outcome, stderr = run_cli(args, tmp_path)
    assert outcome == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    summary = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert summary["split"] == "summary" and summary["skipped"]["by_reason"] == dict(sorted(expected.items()))
    assert f"skipped {sum(expected.values())} record(s)" in stderr
    for kind, count in expected.items():
        assert f"  {kind}: {count} (" in stderr

    # the counts survive --resume (one more epoch: the same records fail again and are counted once)
    outcome, stderr = run_cli([*pretrain_args(path, out, *common, "train.epochs=3"), "--resume"], tmp_path)
    assert outcome == 0, stderr[-3000:]
    summary = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert summary["skipped"]["by_reason"] == dict(sorted(expected.items()))


# ----------------------------------------------------------------------------- checkpoints and evaluation


@pytest.fixture(scope="module")
def checkpoint(corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    path = write_manifest(corpus["root"] / "good.jsonl", corpus["good"] + corpus["valid"][:4])
    outcome, stderr = run_cli(pretrain_args(path, tmp / "run", "train.checkpoint_every=1"), tmp)
    assert outcome == 0, stderr[-3000:]
    return path, tmp / "run"


class _Payload:  # something other than tensors: torch.load(weights_only=True) must refuse it
    pass


@pytest.mark.slow
def test_damaged_checkpoint_files_are_named(checkpoint, tmp_path):
    import shutil

    manifest, run = checkpoint
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    state = copy / "checkpoints" / "last" / "train_state.pt"
    good = state.read_bytes()
    args = pretrain_args(manifest, copy, "train.epochs=2", "--resume")
    with state.open("wb") as f:
        pickle.dump({"optimizer": _Payload()}, f, protocol=2)
    assert_clear(*run_cli(args, tmp_path), str(state), "something other than tensors", "was not loaded")
    state.write_bytes(good[: len(good) // 3])
    assert_clear(*run_cli(args, tmp_path), str(state), "truncated")

    weights = copy / "checkpoints" / "last" / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])
    assert_clear(*run_cli(["evaluate", "zero-shot", "--checkpoint", str(copy / "checkpoints" / "last"),
                           "--data", str(manifest), "--split", "train", "--bootstrap", "0"], tmp_path),
                 str(weights), "not a valid safetensors file")


@pytest.mark.slow
def test_evaluation_names_a_bad_image_and_a_mask_of_the_wrong_size(corpus, tmp_path):
    broken = [{**r, "split": "test"} for r in json.loads(json.dumps(corpus["good"]))]
    assert any(r["labels"] for r in broken) and not all(r["labels"] for r in broken)
    broken[0]["image"] = "bad/short.png"
    path = write_manifest(corpus["root"] / "eval-bad.jsonl", broken)
    assert_clear(*run_cli(["evaluate", "zero-shot", "--checkpoint", "random", "--data", str(path),
                           "--bootstrap", "0"], tmp_path), "short.png")
    # with --on-error skip the record is left out and counted, by reason, in the result JSON
    out = tmp_path / "zs.json"
    outcome, stderr = run_cli(["evaluate", "zero-shot", "--checkpoint", "random", "--data", str(path),
                               "--bootstrap", "0", "--on-error", "skip", "--out", str(out)], tmp_path)
    assert outcome == 0, stderr[-3000:]
    skipped = json.loads(out.read_text())["skipped"]
    assert skipped["by_reason"] == {"corrupt image data": 1} and skipped["first"]["corrupt image data"] == [f"{path}:1"]
    assert "corrupt image data: 1" in stderr

    masked = [r for r in json.loads(json.dumps(corpus["good"])) if any(f.get("mask") for f in r["findings"])]
    assert masked, "the synthetic data has masks"
    small = corpus["root"] / "bad" / "small-mask.png"
    Image.fromarray(np.full((5, 7), 255, np.uint8)).save(small)
    next(f for f in masked[0]["findings"] if f.get("mask"))["mask"] = "bad/small-mask.png"
    for r in masked:
        r["split"], r["id"] = "test", f"test-{r['id']}"
    path = write_manifest(corpus["root"] / "seg-bad.jsonl", masked + [{**r, "split": "train"} for r in
                                                                      json.loads(json.dumps(corpus["good"]))])
    outcome, stderr = run_cli(["evaluate", "segment", "--checkpoint", "random", "--data", str(path),
                               "--epochs", "1", "--bootstrap", "0", "--seeds", "0", "--fractions", "1"], tmp_path)
    assert_clear(outcome, stderr, "small-mask.png", "mask is 5x7")
    out = tmp_path / "seg.json"
    outcome, stderr = run_cli(["evaluate", "segment", "--checkpoint", "random", "--data", str(path), "--epochs", "1",
                               "--bootstrap", "0", "--seeds", "0", "--fractions", "1", "--on-error", "skip",
                               "--out", str(out)], tmp_path)
    assert outcome == 0, stderr[-3000:]
    assert json.loads(out.read_text())["skipped"]["by_reason"] == {"mask size differs from its image": 1}


# ----------------------------------------------------------------------------- kills


def _cli_process(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "medgrain", *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_kill_9_then_resume_finishes(checkpoint, tmp_path):
    """A real process killed with SIGKILL once it has written a checkpoint resumes from it."""
    manifest, _ = checkpoint
    out = tmp_path / "run"
    args = pretrain_args(manifest, out, "train.epochs=6", "train.checkpoint_every=1")
    proc = subprocess.Popen(_cli_process(args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    state = out / "checkpoints" / "last" / "train_state.pt"
    while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if proc.poll() is not None:
        pytest.fail(f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(_cli_process([*args, "--resume"]), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [json.loads(x).get("step") for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 6  # 6 epochs of one step each, the last after the resume


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_leaves_a_whole_one(checkpoint, tmp_path):
    """SIGKILL in the middle of writing the second checkpoint (its weights staged, its train state
    not): the first stays whole and --resume continues from it."""
    manifest, _ = checkpoint
    out = tmp_path / "run"
    args = pretrain_args(manifest, out, "train.epochs=3", "train.checkpoint_every=1", "data.valid_split=null")
    writes = []

    def kill_on_second_train_state():
        from medgrain.training import checkpoint as ckpt

        save = ckpt.torch.save

        def dying_save(obj, path, *a, **k):
            writes.append(path)
            if len(writes) == 2:
                Path(path).write_bytes(b"half a file")
                os.kill(os.getpid(), signal.SIGKILL)
            return save(obj, path, *a, **k)

        ckpt.torch.save = dying_save

    outcome, _ = run_cli(args, tmp_path, prepare=kill_on_second_train_state)
    assert outcome == f"signal {int(signal.SIGKILL)}"
    from medgrain.training.checkpoint import find_resumable

    last = find_resumable(out / "checkpoints" / "last")
    assert last is not None and torch.load(last / "train_state.pt", weights_only=True)["step"] == 1
    outcome, stderr = run_cli([*args, "--resume"], tmp_path)
    assert outcome == 0, stderr[-3000:]
