import base64
import io

import pytest
from PIL import Image

from zamba2vl.errors import ImageError, InputError
from zamba2vl.eval.data import ImageRef, read_hf_rows, read_vlmevalkit_tsv


def png(colour=(255, 0, 0)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_shared_and_multiple_images_and_missing_values(tmp_path):
    img, img2 = png(), png((0, 0, 255))
    tsv = write(tmp_path / "x.tsv", "index\timage\tquestion\tA\tB\tC\tanswer\thint\n"
                f"1\t{img}\tq1\tyes\tNone\t\tA\tNA\n"
                f"2\t1\tq2\tx\ty\tz\tB\t\"quoted\ttab\"\n"
                f"3\t{[img, img2]!r}\tq3\tx\ty\t\tA\tnone\n"
                f"4\t77\tq4\tx\ty\t\tA\t\n")
    rows = read_vlmevalkit_tsv(tsv)
    assert [r.index for r in rows] == [1, 2, 3, 4]  # all-integer indices become ints
    assert rows[0].options == {"A": "yes"}  # "None" and "" are missing, as pandas reads them
    assert rows[0].hint is None and rows[2].hint == "none"
    assert rows[1].images[0].value == img and rows[1].hint == "quoted\ttab"
    assert [ref.load().getpixel((0, 0)) for ref in rows[2].images] == [(255, 0, 0), (0, 0, 255)]
    assert rows[3].problems == ["image: refers to row '77', which has no image"]


def test_bad_base64_is_an_image_error():
    with pytest.raises(ImageError, match="cannot decode image"):
        ImageRef("base64", "bm90IGFuIGltYWdl" * 6).load()


def test_duplicate_index_is_refused(tmp_path):
    tsv = write(tmp_path / "d.tsv", f"index\timage\tquestion\n1\t{png()}\tq\n1\t{png()}\tq\n")
    with pytest.raises(InputError, match="occurs twice"):
        read_vlmevalkit_tsv(tsv)


def test_jsonl_image_forms_and_a_broken_line(tmp_path):
    Image.new("RGB", (4, 4), (0, 255, 0)).save(tmp_path / "g.png")
    lines = [
        '{"question_id": 5, "question": "q", "image": "g.png", "answers": [{"answer": "a"}]}',
        '{"question_id": 6, "question": "q", "image": {"bytes": "%s"}}' % png(),
        '{"question_id": 7, "question": "q", "image": "data:image/png;base64,%s"}' % png((0, 0, 255)),
        '{"question_id": 8, "question": "q"',
        '{"question_id": 9, "question": "q"}',
    ]
    rows = read_hf_rows(write(tmp_path / "v.jsonl", "\n".join(lines) + "\n"))
    assert [r.index for r in rows] == [5, 6, 7, "line4", 9]
    assert rows[0].images[0].load().getpixel((0, 0)) == (0, 255, 0)
    assert rows[1].images[0].load().getpixel((0, 0)) == (255, 0, 0)
    assert rows[2].images[0].load().getpixel((0, 0)) == (0, 0, 255)
    assert rows[3].problems[0].startswith("line 4 is not JSON")
    assert rows[4].problems == ["image: missing"]


def test_parquet_without_pyarrow_says_what_to_do(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_pyarrow(name, *a, **k):
        if name.startswith("pyarrow"):
            raise ImportError("no pyarrow")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(InputError, match="pip install pyarrow"):
        read_hf_rows(tmp_path / "x.parquet")
