import json
import re
from pathlib import Path

import pytest

from medgrain.data.info import format_summary, summarize
from medgrain.data.manifest import ManifestError, json_schema, read_manifest, write_manifest

GOOD = {
    "id": "p1-s1",
    "image": "images/p1.png",
    "split": "train",
    "labels": ["effusion", "nodule"],
    "texts": {"status": "abnormal", "disease": "effusion, nodule", "description": "small left pleural effusion"},
    "report": "Small left pleural effusion. A 6 mm nodule in the right upper lobe.",
    "findings": [
        {"name": "effusion", "location": "left base", "severity": "mild", "mask": "masks/p1-effusion.png"},
        {"name": "nodule", "location": "right upper lobe", "box": [10, 12, 20, 22]},
    ],
    "view": "PA",
    "patient_id": "p1",
}


def record(**changes):
    r = json.loads(json.dumps(GOOD))
    r.update(changes)
    return {k: v for k, v in r.items() if v is not ...}


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_round_trip_keeps_fields_order_and_lines(tmp_path):
    other = record(id="p2", image=None, split="test", labels=[], findings=[], report=None,
                   texts={"status": "normal", "disease": "no finding", "description": "clear lungs"})
    path = write_manifest([GOOD, other], tmp_path / "m.jsonl")
    m = read_manifest(path)
    assert [r.id for r in m.records] == ["p1-s1", "p2"] and [r.line for r in m.records] == [1, 2]
    assert m.granularities == ["status", "disease", "description"]
    assert m.finding_names == ["effusion", "nodule"]
    assert m.records[0].findings[1].box == (10, 12, 20, 22)
    assert [r.id for r in m.split("test")] == ["p2"] and m.resolve("images/p1.png") == tmp_path / "images/p1.png"
    assert read_manifest(write_manifest(m.records, tmp_path / "again.jsonl")).records == m.records


BAD_RECORDS = [
    ('{"id": "x", "image": null, "split": "train"', None, "malformed JSON"),
    (record(split="val"), "split", "'train', 'valid' or 'test'"),
    (record(texts={"status": "abnormal", "disease": "  "}), "texts", "text of granularity 'disease' is empty"),
    (record(id=...), "id", "required field is missing"),
    (record(image=...), "image", "required field is missing"),
    (record(image=""), "image", "image path is empty"),
    (record(labels="effusion"), "labels", "valid list"),
    (record(colour="red"), "colour", "unknown field"),
    (record(findings=[{"name": "nodule", "box": [20, 12, 10, 22]}]), "findings.0.box", "0 <= x0 < x1"),
    (record(findings=[{"name": "nodule", "box": [1, 2, 3]}]), "findings.0.box", "box must be 4 numbers"),
    (record(findings=[{"name": "nodule", "box": [-1, 2, 3, 4]}]), "findings.0.box", "0 <= x0"),
    (record(findings=[{"name": "nodule", "size": 3}]), "findings.0.size", "unknown field"),
    (record(findings=[{"name": "mass"}]), "findings", "findings ['mass'] are not in labels"),
    (record(labels=["nodule", "nodule"], findings=[]), "labels", "duplicate labels"),
    ("[1, 2]", None, "expected a JSON object, got list"),
]


@pytest.mark.parametrize("bad, field, message", BAD_RECORDS)
def test_bad_record_names_file_line_and_field(tmp_path, bad, field, message):
    path = write_lines(tmp_path / "m.jsonl", [record(id="ok"), "", bad])
    with pytest.raises(ManifestError, match=re.escape(message)) as info:
        read_manifest(path)
    e = info.value
    assert (e.path, e.line, e.field) == (str(path), 3, field)
    assert str(e).startswith(f"{path}:3: " + (f"field '{field}': " if field else ""))


def test_duplicate_id_names_both_lines(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", [GOOD, record(id="p2"), GOOD])
    with pytest.raises(ManifestError, match=r"m\.jsonl:3: field 'id': duplicate id 'p1-s1' \(first on line 1\)"):
        read_manifest(path)
    with pytest.raises(ManifestError, match="duplicate id"):
        write_manifest([GOOD, GOOD], tmp_path / "w.jsonl")
    assert not (tmp_path / "w.jsonl").exists() and not (tmp_path / "w.jsonl.tmp").exists()


def test_skip_keeps_going_and_counts_every_bad_line(tmp_path):
    lines = [GOOD, "{not json", record(id="b", split="val"), GOOD, record(id="c"), "[]"]
    path = write_lines(tmp_path / "m.jsonl", lines)
    (path.parent / "bytes.jsonl").write_bytes(path.read_bytes() + b'{"id": "\xff"}\n')
    m = read_manifest(path.parent / "bytes.jsonl", on_error="skip")
    assert [r.id for r in m.records] == ["p1-s1", "c"]
    assert [(s.line, s.field) for s in m.skipped] == [(2, None), (3, "split"), (4, "id"), (6, None), (7, None)]
    assert "not UTF-8" in m.skipped[-1].reason


CSV_HEADER = "id,image,split,labels,texts.status,texts.disease,report,findings,view\n"


def test_csv_form(tmp_path):
    findings = json.dumps([{"name": "nodule", "box": [1, 2, 3, 4]}]).replace('"', '""')
    path = tmp_path / "m.csv"
    path.write_text(
        CSV_HEADER
        + f'a,img/a.png,train,effusion| nodule,abnormal,"effusion, nodule",Effusion.,"{findings}",PA\n'
        + "b,,valid,,normal,no finding,,,\n"
        + "\n"
    )
    m = read_manifest(path)
    a, b = m.records
    assert a.labels == ["effusion", "nodule"] and a.texts == {"status": "abnormal", "disease": "effusion, nodule"}
    assert a.findings[0].box == (1, 2, 3, 4) and a.view == "PA" and a.line == 2
    assert b.image is None and b.labels == [] and b.report is None and b.split == "valid" and b.line == 3


@pytest.mark.parametrize(
    "header, row, line, field, message",
    [
        (CSV_HEADER, "a,x.png,train,,s,d,r,,PA,extra\n", 2, None, "row has 10 cells but the header has 9"),
        (CSV_HEADER, "a,x.png,train,,s,d\n", 2, None, "row has 6 cells"),
        (CSV_HEADER, "a,x.png,train,,s,d,r,[{oops,PA\n", 2, "findings", "cell is not valid JSON"),
        (CSV_HEADER, "a,x.png,tr,,s,d,r,,PA\n", 2, "split", "'train', 'valid' or 'test'"),
        (CSV_HEADER, "a,x.png,train,[oops,s,d,r,,PA\n", 2, "labels", "cell is not valid JSON"),
        ("id,image,split,label\n", "a,x.png,train,y\n", 1, "label", "unknown column"),
        ("id,image,labels\n", "a,x.png,y\n", 1, "split", "required column is missing"),
        ("id,split,split\n", "a,train,train\n", 1, "split", "more than once"),
    ],
)
def test_csv_row_and_header_problems(tmp_path, header, row, line, field, message):
    path = tmp_path / "m.csv"
    path.write_text(header + row)
    with pytest.raises(ManifestError, match=message) as info:
        read_manifest(path)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), line, field)


def test_csv_skip_counts_rows_but_a_bad_header_still_raises(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(CSV_HEADER + "a,x.png,train,,s,d,r,,PA\nb,x.png,train,,s\nc,x.png,nope,,s,d,r,,PA\n")
    m = read_manifest(path, on_error="skip")
    assert [r.id for r in m.records] == ["a"] and [s.line for s in m.skipped] == [3, 4]
    path.write_text("id,split,colour\na,train,red\n")
    with pytest.raises(ManifestError, match="unknown column"):
        read_manifest(path, on_error="skip")


def test_committed_schema_is_the_generated_one():
    committed = Path(__file__).resolve().parents[1] / "docs" / "manifest.schema.json"
    assert json.loads(committed.read_text()) == json_schema(), (
        "docs/manifest.schema.json is stale; regenerate it with: python -c \"import json, medgrain.data as d; "
        "print(json.dumps(d.json_schema(), indent=2))\" > docs/manifest.schema.json"
    )


def test_summary_counts_splits_findings_texts_pairs_and_skips(tmp_path):
    other = record(id="p2", split="valid", labels=["nodule"], findings=[], texts={**GOOD["texts"], "disease": "nodule"})
    normal = record(id="p3", image=None, labels=[], findings=[], report=None,
                    texts={"status": "normal", "disease": "no [finding]", "description": "clear"})
    path = write_lines(tmp_path / "m.jsonl", [GOOD, other, normal, record(id="p4", split="val")])
    summary = summarize(read_manifest(path, on_error="skip"))
    assert summary["records"] == 3 and summary["splits"] == {"train": 2, "valid": 1, "test": 0}
    assert summary["with_image"] == 2 and summary["with_report"] == 2 and summary["normal"] == 1
    assert summary["findings"] == {"nodule": {"count": 2, "percent": 66.67}, "effusion": {"count": 1, "percent": 33.33}}
    assert summary["cooccurring"] == [{"findings": ["effusion", "nodule"], "count": 1}]
    status = summary["granularities"]["status"]
    assert status["distinct"] == 2 and status["most_common"][0] == {"text": "abnormal", "count": 2}
    assert [s["line"] for s in summary["skipped"]] == [4] and summary["skipped"][0]["field"] == "split"
    text = format_summary(summary)
    for expected in ("3 records", "nodule", "66.7", "effusion + nodule", "no [finding]", "skipped records: 1", "line 4"):
        assert expected in text
    json.dumps(summary)  # plain JSON


def test_absent_texts_and_reports_are_values_empty_ones_errors(tmp_path):
    """A granularity's text may be null or left out, the report may be absent; an empty or blank string
    stays an error (a bad record, not a missing one)."""
    null_text = record(id="p2", texts={"status": "normal", "disease": None, "description": "clear"}, report=...)
    left_out = record(id="p3", split="valid", texts={"status": "abnormal"}, report=None)
    m = read_manifest(write_lines(tmp_path / "m.jsonl", [GOOD, null_text, left_out]))
    assert m.records[1].texts == {"status": "normal", "description": "clear"} and m.records[1].report is None
    assert m.records[2].texts == {"status": "abnormal"}
    assert m.granularities == ["status", "disease", "description"]
    for texts, message in (({"disease": ""}, "'disease' is empty"), ({"disease": " \t"}, "'disease' is empty")):
        with pytest.raises(ManifestError, match=message) as err:
            read_manifest(write_lines(tmp_path / "bad.jsonl", [record(texts=texts)]))
        assert err.value.line == 1 and err.value.field == "texts"
    with pytest.raises(ManifestError, match="report is empty"):
        read_manifest(write_lines(tmp_path / "bad.jsonl", [record(report="  ")]))


def test_summary_counts_texts_present_per_granularity_and_split(tmp_path):
    lines = [
        GOOD,
        record(id="p2", texts={"status": "normal", "disease": None}, report=...),
        record(id="p3", split="valid", texts={"status": "abnormal", "description": "x"}),
        record(id="p4", split="test", texts={}, report=None),
    ]
    summary = summarize(read_manifest(write_lines(tmp_path / "m.jsonl", lines)))
    g = summary["granularities"]
    assert g["status"]["present"] == {"train": 2, "valid": 1, "test": 0}
    assert g["disease"]["present"] == {"train": 1, "valid": 0, "test": 0} and g["disease"]["missing"] == 3
    assert g["description"]["present"] == {"train": 1, "valid": 1, "test": 0}
    assert summary["reports"] == {"train": 1, "valid": 1, "test": 0}
    text = format_summary(summary)
    assert "train/valid/test" in text and re.search(r"disease .* 1/0/0", text) and re.search(r"report .* 1/1/0", text)


def test_union_of_orders_keeps_coarse_to_fine():
    from medgrain.data.manifest import union_of_orders

    assert union_of_orders([["a", "c"], ["a", "b", "c"]]) == ["a", "b", "c"]
    assert union_of_orders([["b", "c"], ["a", "b"], ["c", "d"]]) == ["a", "b", "c", "d"]
    assert union_of_orders([[], ["x"]]) == ["x"] and union_of_orders([]) == []


def test_csv_non_utf8_byte_names_its_line_and_column(tmp_path):
    # the byte sits far into the file, past the decoder's first chunk, where the line used to be wrong
    rows = [f"r{k},,train,,normal,clear,,,\n".encode() for k in range(400)]
    rows[300] = b"bad,,train,,normal,cl\xe9ar,,,\n"
    path = tmp_path / "m.csv"
    path.write_bytes(CSV_HEADER.encode() + b"".join(rows))
    with pytest.raises(ManifestError, match=r"m\.csv:302: field 'texts\.disease': not UTF-8 text: byte 0xE9 at "
                                            r"character 3 of the cell") as info:
        read_manifest(path)
    assert info.value.line == 302
    m = read_manifest(path, on_error="skip")
    assert len(m.records) == 399 and [(s.line, s.field) for s in m.skipped] == [(302, "texts.disease")]


def test_info_counts_skips_per_reason_and_shows_the_first_lines_of_each(tmp_path):
    from medgrain.data.skips import SHOWN

    bad_split = [record(id=f"s{i}", split="val") for i in range(SHOWN + 2)]
    path = write_lines(tmp_path / "m.jsonl", [GOOD, *bad_split])
    with open(path, "a") as f:
        f.write("{not json\n")
    summary = summarize(read_manifest(path, on_error="skip"))
    assert summary["skipped_by_reason"] == {"invalid field 'split'": SHOWN + 2, "malformed JSON": 1}
    assert len(summary["skipped"]) == SHOWN + 3  # --json keeps every line
    text = format_summary(summary)
    assert f"skipped records: {SHOWN + 3}" in text and f"invalid field 'split': {SHOWN + 2}" in text
    assert "malformed JSON: 1" in text and "and 2 more" in text
    # lines 2 to SHOWN + 1 are the first bad splits; the others are counted, not listed
    assert f"line {SHOWN + 1} field 'split'" in text and f"line {SHOWN + 2} field" not in text
