"""medgrain reproduce: a paper table's protocol runs on the manifests given, prints the paper's number
next to ours with its interval, and names the datasets it lacks with where to get them."""

import json

import pytest
import torch

from medgrain.cli import main
from medgrain.evaluation.reproduce import PROTOCOL_TABLES, WHERE, parse_data, reproduce


def test_every_table_names_where_to_get_its_data():
    assert {"mgca-linear-probe", "mgca-segmentation", "mgca-detection", "mgll-linear-probe",
            "mgll-finetune"} <= set(PROTOCOL_TABLES.names())
    for name in PROTOCOL_TABLES.names():
        table = PROTOCOL_TABLES.get(name)
        for protocol in table.protocols:
            assert protocol.dataset in WHERE
            assert all(len(values) == len(protocol.fractions) for values in protocol.paper.values())


def test_bad_arguments():
    with pytest.raises(ValueError, match="NAME=MANIFEST"):
        parse_data(["chexpert"])
    with pytest.raises(ValueError, match=r"no dataset \['padchest'\] in this table"):
        reproduce("mgca-linear-probe", "random", {"padchest": "x.jsonl"})
    with pytest.raises(ValueError, match="unknown paper table 'mgca-zero-shot'"):
        reproduce("mgca-zero-shot", "random", {})


def test_reproduce_mgll_linear_probe_on_a_stand_in(tmp_path, capsys):
    from medgrain.data.synthetic import generate
    from medgrain.models import create_model, get_tokenizer, save_pretrained

    manifest = generate("cxr", tmp_path / "cxr", n=40, seed=6, size=64, workers=1, progress=False)
    torch.manual_seed(0)
    model, tokenizer = create_model("tiny"), get_tokenizer("tiny")
    checkpoint = save_pretrained(model, tokenizer, tmp_path / "tiny")
    out = tmp_path / "table.json"
    assert main(["reproduce", "mgll-linear-probe", "--checkpoint", str(checkpoint),
                 "--data", f"chestxray14={manifest}", "--bootstrap", "50", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "82.94" in printed and "rfmid" in printed and "RFMiD" in printed
    summary = json.loads(out.read_text())
    (row,) = summary["rows"]
    assert row["dataset"] == "chestxray14" and row["paper"] == {"MGLL": 82.94, "CLIP": 69.75}
    assert 0 <= row["ours"] <= 100 and row["ours_ci"][0] <= row["ours"] <= row["ours_ci"][1]
    assert set(summary["missing"]) == {"rfmid", "midrc-xr"}
    options = summary["results"]["chestxray14"]["options"]
    assert options["solver"] == "adamw" and options["select"] == "accuracy"
