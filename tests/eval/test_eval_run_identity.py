"""An output folder remembers who made its predictions: a different model or setting is refused, not resumed."""

import json
import shutil

import pytest

from zamba2vl.errors import InputError
from zamba2vl.eval.benchmarks import EvalConfig, get_benchmark
from zamba2vl.eval.predictors import AnswerPredictor, ModelPredictor, folder_fingerprint
from zamba2vl.eval.runner import RUN_FILE, RunSettings, load_samples, run_benchmark

from test_eval_resume import make_data  # same folder (no __init__.py: pytest puts it on sys.path)


def _run(data, out, answers, config=None, restart=False, bench="seedbench_img"):
    b = get_benchmark(bench)
    config = config or EvalConfig()
    samples = load_samples(b, data, config)
    predictor = AnswerPredictor(answers)
    settings = RunSettings(model="m", batch_size=4, progress=False, restart=restart, data_label="seed.tsv")
    return run_benchmark(b, samples, predictor, out, config, settings), predictor


def test_other_answers_in_the_same_folder_are_refused_then_restarted(tmp_path):
    data, answers = make_data(tmp_path)
    out = tmp_path / "out"
    first, p = _run(data, out, answers)
    assert p.calls == 20 and json.loads((out / RUN_FILE).read_text())["benchmark"] == "seedbench_img"
    again, p = _run(data, out, answers)  # same predictor, same settings: resumes, nothing generated
    assert p.calls == 0 and again["score"] == first["score"]

    before = {f.name: f.read_bytes() for f in out.iterdir()}
    other = {k: "C" for k in answers}  # "a retrained model"
    with pytest.raises(InputError, match=r"another model or with other settings \(different: predictor\).*--restart"):
        _run(data, out, other)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # nothing was touched

    restarted, p = _run(data, out, other, restart=True)
    assert p.calls == 20  # every row again, with the new answers
    assert restarted["score"] == pytest.approx(100 * 6 / 21)  # "C" is right for rows 2, 5, 8, 11, 14, 17 (6 of 21)
    assert json.loads((out / RUN_FILE).read_text())["predictor"] == AnswerPredictor(other).identity()


def test_a_changed_prompt_setting_is_refused_but_more_rows_resume(tmp_path):
    data, answers = make_data(tmp_path)
    out = tmp_path / "out"
    _run(data, out, answers)
    with pytest.raises(InputError, match=r"different: max_new_tokens, prompt_style\)"):
        _run(data, out, answers, EvalConfig(prompt_style="vlmevalkit", max_new_tokens=5))


def test_synthetic_seed_matters_but_row_count_does_not(tmp_path):
    out = tmp_path / "syn"
    cfg = lambda rows, seed: EvalConfig(synthetic={"rows": rows, "seed": seed, "image_size": 112})  # noqa: E731
    _, p = _run(None, out, {}, cfg(8, 5), bench="synthetic")
    assert p.calls == 8
    _, p = _run(None, out, {}, cfg(12, 5), bench="synthetic")
    assert p.calls == 4  # rows 0-7 are the same examples: only the new ones are generated
    with pytest.raises(InputError, match=r"different: synthetic\)"):
        _run(None, out, {}, cfg(12, 6), bench="synthetic")


def test_a_folder_from_before_run_json_resumes_with_a_warning(tmp_path, capsys):
    data, answers = make_data(tmp_path)
    out = tmp_path / "out"
    _run(data, out, answers)
    (out / RUN_FILE).unlink()
    b = get_benchmark("seedbench_img")
    samples = load_samples(b, data, EvalConfig())
    p = AnswerPredictor(answers)
    run_benchmark(b, samples, p, out, EvalConfig(), RunSettings(model="m", progress=True, data_label="seed.tsv"))
    assert p.calls == 0 and "do not say which model made them" in capsys.readouterr().err
    assert (out / RUN_FILE).is_file()  # recorded from now on


def test_model_fingerprint_follows_the_files_not_the_path(tmp_path):
    src = tmp_path / "a"
    src.mkdir()
    (src / "config.json").write_text('{"x": 1}')
    big = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB: only its ends are read
    (src / "model.safetensors").write_bytes(big)
    (src / "notes.md").write_text("not part of the model")
    copy = tmp_path / "b"
    shutil.copytree(src, copy)
    assert folder_fingerprint(src) == folder_fingerprint(copy)
    assert ModelPredictor(str(src)).identity() == ModelPredictor(str(copy)).identity()
    (copy / "notes.md").write_text("changed")
    assert folder_fingerprint(copy) == folder_fingerprint(src)
    (copy / "model.safetensors").write_bytes(big[:-1] + b"\x00")  # retrained: the last bytes differ
    assert folder_fingerprint(copy) != folder_fingerprint(src)
    (copy / "model.safetensors").write_bytes(big)
    (copy / "config.json").write_text('{"x": 2}')
    assert folder_fingerprint(copy) != folder_fingerprint(src)
    assert ModelPredictor(str(tmp_path / "missing")).identity()["model"] == str(tmp_path / "missing")


def test_an_edited_data_file_of_the_same_name_is_refused(tmp_path, capsys):
    from zamba2vl.eval.cli import main

    data, answers = make_data(tmp_path)
    answer_file = tmp_path / "answers.json"
    answer_file.write_text(json.dumps(answers))
    args = ["--model", f"answers:{answer_file}", "--bench", "seedbench_img", "--data", str(data),
            "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(args) == 0
    run = json.loads((tmp_path / "o" / "seedbench_img" / RUN_FILE).read_text())
    assert run["data"] == "seed.tsv" and len(run["data_fingerprint"]) == 16
    assert main(args) == 0  # unchanged: resumes
    capsys.readouterr()

    data.write_text(data.read_text().replace("\tq3\t", "\tq3, asked another way\t"))  # same name, other rows
    assert main(args) == 2
    assert "different: data_fingerprint" in capsys.readouterr().err
    assert main(args + ["--restart"]) == 0


def test_a_data_folder_fingerprint_covers_every_file_in_it(tmp_path):
    from zamba2vl.eval.predictors import file_fingerprint

    split = tmp_path / "split"  # a Parquet split: the reader takes every *.parquet in the folder
    split.mkdir()
    (split / "part-0.parquet").write_bytes(b"rows 0")
    (split / "part-1.parquet").write_bytes(b"rows 1")
    before = file_fingerprint(split)
    assert file_fingerprint(split) == before and len(before) == 16
    (split / "part-1.parquet").write_bytes(b"rows 2")
    edited = file_fingerprint(split)
    assert edited != before
    (split / "part-2.parquet").write_bytes(b"more")
    assert file_fingerprint(split) not in (before, edited)
