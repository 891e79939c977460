"""The mixture sampler: deterministic, weighted, epoch-complete, resumable, and sharded without overlap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from trainkit import processor

from zamba2vl.train import synthetic
from zamba2vl.train.encode import ConversationEncoder
from zamba2vl.train.mixture import Mixture
from zamba2vl.train.sources import DataError, JsonlSource, SkipLog, SyntheticSource

class Counted:
    """A stand-in source of `size` records (None: endless) that draws nothing from disk."""

    def __init__(self, size):
        self.size = size

    def messages(self, i):
        return [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}], f"src:{i}"


def mixture(sizes=(5, None), weights=(3.0, 1.0), seed=0, encoder=None):
    return Mixture([Counted(s) for s in sizes], weights, encoder, seed=seed, skips=SkipLog())


def test_same_seed_same_stream_other_seed_other_stream():
    a, b, c = mixture(seed=1).draw(200), mixture(seed=1).draw(200), mixture(seed=2).draw(200)
    assert a == b and a != c


def test_weights_set_the_share_of_each_source():
    picks = mixture(weights=(3.0, 1.0)).draw(4000)
    share = np.mean([s == 0 for s, _ in picks])
    assert abs(share - 0.75) < 0.03


def test_each_epoch_visits_every_record_once_in_a_new_order():
    m = mixture(sizes=(7,), weights=(1.0,))
    records = [m._record(s, n) for s, n in m.draw(21)]
    epochs = [records[i : i + 7] for i in range(0, 21, 7)]
    assert all(sorted(e) == list(range(7)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3
    endless = mixture(sizes=(None,), weights=(1.0,))
    assert [endless._record(s, n) for s, n in endless.draw(5)] == [0, 1, 2, 3, 4]


def test_state_dict_continues_the_same_stream():
    m = mixture()
    m.draw(37)
    state = json.loads(json.dumps(m.state_dict()))  # plain data, as checkpoints store it
    rest = m.draw(50)
    fresh = mixture()
    fresh.load_state_dict(state)
    assert fresh.draw(50) == rest
    changed = mixture(sizes=(6, None))
    with pytest.raises(Exception, match="the data sources changed"):
        changed.load_state_dict(state)


def test_rank_shards_put_together_are_the_single_process_batch(tmp_path):
    path = synthetic.to_jsonl(synthetic.generate(n=4, seed=3, image_size=56), tmp_path)
    proc = processor()
    encoder = ConversationEncoder(proc)

    def build():
        sources = [JsonlSource(path, progress=False), SyntheticSource(seed=8, image_size=56)]
        return Mixture(sources, [1.0, 1.0], encoder, seed=4, skips=SkipLog())

    reference, one, ranks = build(), build(), [build(), build()]
    ids = lambda examples: [e.input_ids.tolist() for e in examples]  # noqa: E731
    by_length = lambda examples: sorted(examples, key=lambda e: len(e.input_ids))  # noqa: E731
    for _ in range(2):  # two steps of a global batch of 4
        drawn = [reference.load(s, n) for s, n in reference.draw(4)]  # the global batch in sampling order
        whole = [e for mb in one.next_step(4, 0, 1, micro=2) for e in mb]
        assert ids(whole) == ids(by_length(drawn))
        for r, m in enumerate(ranks):  # rank r: the r-th half of the global batch, ordered by length
            mine = m.next_step(4, r, 2, micro=1)
            assert [len(mb) for mb in mine] == [1, 1]
            assert ids([e for mb in mine for e in mb]) == ids(by_length(drawn[2 * r : 2 * r + 2]))
    assert one.state_dict() == ranks[0].state_dict() == ranks[1].state_dict()


def test_synthetic_curriculum_phases_pick_the_tasks_and_stay_deterministic():
    tasks = ["counting", "bar_chart"]
    src = SyntheticSource(tasks=tasks, task_weights=[1, 1], seed=3, image_size=56,
                          curriculum=[[6, [0, 1]], [10, [1, 0]]])
    names = [src.messages(i)[1].split(":")[1].rsplit("-", 2)[0] for i in range(16)]
    assert names[:6] == ["bar_chart"] * 6 and names[6:10] == ["counting"] * 4
    assert set(names[10:]) == {"counting", "bar_chart"}  # after the last phase: task_weights
    # Each example depends only on (seed, index): drawn again out of order, the same.
    again = SyntheticSource(tasks=tasks, task_weights=[1, 1], seed=3, image_size=56,
                            curriculum=[[6, [0, 1]], [10, [1, 0]]])
    for i in (12, 7, 2):
        a, b = src.messages(i)[0], again.messages(i)[0]
        assert a[1] == b[1] and a[0]["content"][0]["image"].tobytes() == b[0]["content"][0]["image"].tobytes()


@pytest.mark.parametrize("bad", [[[0, [1, 1]]], [[5, [1, 1]], [5, [1, 0]]], [[5, [1]]], [["5", [1, 1]]], [5]])
def test_synthetic_curriculum_errors_say_what_is_expected(bad):
    from zamba2vl.train.sources import DataError

    with pytest.raises(DataError, match=r"curriculum\[\d\].*until_example"):
        SyntheticSource(tasks=["counting", "bar_chart"], seed=3, image_size=56, curriculum=bad)


def test_synthetic_source_grounding_format():
    from zamba2vl.train.sources import DataError

    src = SyntheticSource(tasks=["grounding"], seed=3, image_size=56, grounding_format="box")
    messages, _ = src.messages(4)
    box = synthetic.make_example("grounding", 3, 4, 56).meta["box"]
    assert messages[1]["content"][0]["text"] == "[" + ", ".join(map(str, box)) + "]"
    with pytest.raises(DataError, match="grounding_format.*'xml'"):
        SyntheticSource(tasks=["grounding"], seed=3, image_size=56, grounding_format="xml")


# ------------------------------------------------------------------------------------------------ prefetch


def _encoded_answer_record(answer: str) -> str:
    return json.dumps({"messages": [
        {"role": "user", "content": [{"type": "image", "image": "img.png"}, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]}]})


def _prefetch_pair(tmp_path, stop=False):
    """Two mixtures over the same data, without and with prefetch: a JSONL source with two records too long to encode
    (bad records met only when a step takes them) and a synthetic one."""
    from PIL import Image

    Image.new("RGB", (56, 56), (20, 200, 30)).save(tmp_path / "img.png")
    lines = [_encoded_answer_record(a) for a in ("green", "a very long answer " * 20, "lime", "no " * 80, "leaf")]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    encoder = ConversationEncoder(processor(), max_length=72)  # the synthetic samples fit; lines 2 and 4 do not

    def build(prefetch):
        skips = SkipLog(stop=stop)
        sources = [JsonlSource(str(path), skips=skips, progress=False), SyntheticSource(seed=8, image_size=56)]
        return Mixture(sources, [2.0, 1.0], encoder, seed=5, skips=skips, prefetch=prefetch)

    return build(False), build(True), str(path)


def _ids(micro_batches):
    return [(e.input_ids.tolist(), None if e.pixel_values is None else e.pixel_values.sum().item())
            for mb in micro_batches for e in mb]


def test_prefetch_loads_the_next_step_in_the_background_and_changes_nothing(tmp_path):
    import threading

    plain, ahead, path = _prefetch_pair(tmp_path)
    where = []  # the thread each example of `ahead` was encoded in
    encode = ahead._encode

    def spy(s, n):
        where.append(threading.current_thread().name)
        return encode(s, n)

    ahead._encode = spy
    for step in range(6):  # a global batch of 4 split over 2 ranks: this is rank 1
        a, b = plain.next_step(4, 1, 2, micro=1), ahead.next_step(4, 1, 2, micro=1)
        assert _ids(a) == _ids(b)
        # bad records are reported by the step that takes them, not when they are loaded ahead
        assert plain.skips.records == ahead.skips.records
        assert plain.state_dict() == ahead.state_dict()
    assert plain.skips.count >= 1 and {w for w, _ in plain.skips.records} <= {f"{path}:2", f"{path}:4"}
    assert where[:2] == ["MainThread"] * 2  # the first step: nothing was ahead yet
    assert len(where) >= 12 and all(t.startswith("zamba2vl-data") for t in where[2:])
    # the step after the last one is loading; `more=False` starts nothing, and close() ends the thread
    assert ahead._ahead is not None
    ahead.next_step(4, 1, 2, micro=1, more=False)
    assert ahead._ahead is None
    ahead.close()
    assert ahead._pool is None


def test_prefetch_after_a_resume_drops_what_it_loaded_ahead(tmp_path):
    plain, ahead, _ = _prefetch_pair(tmp_path)
    for _ in range(3):
        plain.next_step(4, 0, 1, micro=2)
    saved = plain.state_dict()
    ahead.next_step(4, 0, 1, micro=2)  # now loading step 2 ahead
    ahead.load_state_dict(saved)  # ... but the run resumes at step 4
    assert _ids(ahead.next_step(4, 0, 1, micro=2)) == _ids(plain.next_step(4, 0, 1, micro=2))
    assert _ids(ahead.next_step(4, 0, 1, micro=2)) == _ids(plain.next_step(4, 0, 1, micro=2))
    ahead.close()


def test_prefetch_stops_a_strict_run_at_the_step_that_takes_the_bad_record(tmp_path):
    plain, ahead, path = _prefetch_pair(tmp_path, stop=True)
    for step in range(1, 20):
        try:
            plain.next_step(2, 0, 1, micro=1)
        except DataError as e:
            with pytest.raises(DataError) as caught:
                ahead.next_step(2, 0, 1, micro=1)
            assert str(caught.value) == str(e) and e.where in (f"{path}:2", f"{path}:4")
            break
        ahead.next_step(2, 0, 1, micro=1)  # the same step goes through with prefetch too
    else:
        pytest.fail("no step took a bad record")
    ahead.close()
