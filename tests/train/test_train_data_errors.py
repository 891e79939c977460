"""Bad records: each is named by file and line, and is skipped (counted, reported) or stops the run."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from trainkit import processor, stage_config

from zamba2vl.train.config import config_from_dict
from zamba2vl.train.encode import ConversationEncoder
from zamba2vl.train.mixture import Mixture
from zamba2vl.train.sources import DataError, JsonlSource, SkipLog

def record(image: str, answer: str = "red") -> str:
    return json.dumps({"messages": [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]}]})


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (56, 56), (220, 30, 30)).save(tmp_path / "img" / "small.png")
    Image.new("RGB", (224, 224), (220, 30, 30)).save(tmp_path / "img" / "big.png")  # 64 image tokens
    return tmp_path


BAD = {
    "malformed": ('{"messages": [', r"not valid JSON \(Expecting"),
    "missing_image": (record("img/nowhere.png"), r"image file not found: .*img/nowhere\.png"),
    "over_budget": (record("img/big.png"), r"its images need 64 tokens \(per image: \[64\]\), over the budget "
                                           r"data\.max_image_tokens=16"),
}


def write(folder, lines) -> str:
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_each_bad_record_stops_the_run_with_file_and_line(folder, kind):
    line, message = BAD[kind]
    path = write(folder, [record("img/small.png"), "", line, record("img/small.png")])
    with pytest.raises(DataError, match=rf"^{path}:3: {message}") as e:
        JsonlSource(path, max_image_tokens=16, skips=SkipLog(stop=True), progress=False)
    assert e.value.where == f"{path}:3"


def test_bad_records_are_skipped_counted_and_listed(folder, capsys):
    lines = [record("img/small.png"), BAD["malformed"][0], BAD["missing_image"][0], BAD["over_budget"][0],
             json.dumps({"image": "img/small.png", "conversations": [{"from": "human", "value": "<image>\nColour?"},
                                                                      {"from": "gpt", "value": "red"}]}),
             json.dumps({"messages": [{"role": "user", "content": "hi"}]}), ""]
    path = write(folder, lines)
    skips = SkipLog()
    source = JsonlSource(path, max_image_tokens=16, skips=skips, progress=False)
    assert source.size == 2 and source.lines == [1, 5]
    assert [w for w, _ in skips.records] == [f"{path}:{n}" for n in (2, 3, 4, 6)]
    assert "no assistant answer" in skips.records[-1][1]
    assert capsys.readouterr().err.count("skipping bad record") == 4
    messages, where = source.messages(1)
    assert where == f"{path}:5" and messages[0]["content"][0]["image"] == str(folder / "img" / "small.png")


def test_a_record_failing_when_encoded_is_reported_and_replaced(folder):
    path = write(folder, [record("img/small.png", answer="a very long answer " * 20), record("img/small.png")])
    skips = SkipLog()
    source = JsonlSource(path, skips=skips, progress=False)
    encoder = ConversationEncoder(processor(), max_length=40)
    mixture = Mixture([source], [1.0], encoder, seed=0, skips=skips)
    examples = [mixture.load(0, n) for n in range(4)]
    assert all(len(e.input_ids) <= 40 for e in examples)
    assert skips.count >= 1 and {w for w, _ in skips.records} == {f"{path}:1"}
    assert "over data.max_length=40" in skips.records[0][1]
    strict = Mixture([source], [1.0], encoder, seed=0, skips=SkipLog(stop=True))
    first_line = next(n for n in range(2) if strict._record(0, n) == 0)  # the pick that reads line 1
    with pytest.raises(DataError, match=rf"^{path}:1: the sample is \d+ tokens long"):
        strict.load(0, first_line)


def test_trainer_stops_on_the_first_bad_record_when_asked(folder, tmp_path):
    from zamba2vl.train.trainer import Trainer

    path = write(folder, [record("img/small.png"), BAD["missing_image"][0]])
    config = stage_config(tmp_path / "run", threads=None, data={
        "sources": [{"type": "jsonl", "path": path}], "on_bad_record": "stop", "progress": False})
    with pytest.raises(DataError, match=rf"{path}:2: image file not found"):
        Trainer(config_from_dict(config), progress=False)
