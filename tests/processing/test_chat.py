"""Chat template tests: where templates are found, the default template's output, parity with transformers."""

import json
import warnings

import pytest
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models
from transformers import PreTrainedTokenizerFast

from zamba2vl.errors import ConfigError, InputError
from zamba2vl.processing import chat
from zamba2vl.processing.chat import DEFAULT_CHAT_TEMPLATE, find_chat_template, normalize_messages, render_chat

TEXT_ONLY = [{"role": "user", "content": "What is 2+2?"}]
ONE_IMAGE = [{"role": "user", "content": [{"type": "image", "image": "cat.png"},
                                          {"type": "text", "text": "Describe the image."}]}]
THREE_IMAGES_TWO_TURNS = [
    {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "Compare "},
                                 {"type": "image_url", "image_url": {"url": "http://x/b.png"}},
                                 {"type": "text", "text": "these."}]},
    {"role": "assistant", "content": [{"type": "text", "text": "They differ."}]},
    {"role": "user", "content": [{"type": "text", "text": "And this one?"}, {"type": "image", "url": "c.png"}]},
]
WITH_SYSTEM = [{"role": "system", "content": "You are terse."},
               {"role": "user", "content": [{"type": "text", "text": "Hi <b>é</b> \"q\""}]}]


def test_default_template_text_only():
    assert render_chat(DEFAULT_CHAT_TEMPLATE, TEXT_ONLY) == "<s>user\nWhat is 2+2?</s>\n<s>assistant\n"
    assert render_chat(DEFAULT_CHAT_TEMPLATE, TEXT_ONLY, add_generation_prompt=False) == \
        "<s>user\nWhat is 2+2?</s>\n"


def test_default_template_one_image():
    assert render_chat(DEFAULT_CHAT_TEMPLATE, ONE_IMAGE) == \
        "<image>\n<s>user\nDescribe the image.</s>\n<s>assistant\n"
    assert render_chat(DEFAULT_CHAT_TEMPLATE, ONE_IMAGE, image_token="<|image|>") == \
        "<|image|>\n<s>user\nDescribe the image.</s>\n<s>assistant\n"


def test_default_template_three_images_two_turns():
    expected = ("<image>\n<image>\n<s>user\nCompare these.</s>\n"
                "<s>assistant\nThey differ.</s>"
                "<image>\n<s>user\nAnd this one?</s>\n"
                "<s>assistant\n")
    assert render_chat(DEFAULT_CHAT_TEMPLATE, THREE_IMAGES_TWO_TURNS) == expected
    normalized, images = normalize_messages(THREE_IMAGES_TWO_TURNS)
    assert images == ["a.png", "http://x/b.png", "c.png"]
    assert render_chat(DEFAULT_CHAT_TEMPLATE, normalized) == expected


def test_default_template_system_prompt():
    assert render_chat(DEFAULT_CHAT_TEMPLATE, WITH_SYSTEM) == \
        "<s>system\nYou are terse.</s><s>user\nHi <b>é</b> \"q\"</s>\n<s>assistant\n"


# ---- finding templates ----------------------------------------------------------------------------------


def _write(folder, name, data):
    (folder / name).write_text(data if isinstance(data, str) else json.dumps(data))


def test_find_chat_template_precedence(tmp_path):
    assert find_chat_template(tmp_path) is None
    _write(tmp_path, "tokenizer_config.json", {"add_bos_token": True})
    assert find_chat_template(tmp_path) is None
    _write(tmp_path, "tokenizer_config.json", {"chat_template": "T"})
    assert find_chat_template(tmp_path) == ("T", "tokenizer_config.json")
    _write(tmp_path, "processor_config.json", {"chat_template": "P"})
    assert find_chat_template(tmp_path) == ("P", "processor_config.json")
    _write(tmp_path, "chat_template.json", {"chat_template": "J"})
    assert find_chat_template(tmp_path) == ("J", "chat_template.json")
    _write(tmp_path, "chat_template.jinja", "{{ x }}\n")
    assert find_chat_template(tmp_path) == ("{{ x }}\n", "chat_template.jinja")


def test_find_chat_template_named_list(tmp_path):
    _write(tmp_path, "tokenizer_config.json", {"chat_template": [{"name": "tool_use", "template": "A"},
                                                                 {"name": "default", "template": "B"}]})
    assert find_chat_template(tmp_path) == ("B", "tokenizer_config.json")
    _write(tmp_path, "tokenizer_config.json", {"chat_template": [{"name": "tool_use", "template": "A"}]})
    with pytest.raises(ConfigError, match="none named 'default'"):
        find_chat_template(tmp_path)
    _write(tmp_path, "tokenizer_config.json", "{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        find_chat_template(tmp_path)


def test_default_template_warns_once(monkeypatch):
    monkeypatch.setattr(chat, "_warned_default", False)
    with pytest.warns(UserWarning, match="no chat template"):
        assert chat.default_chat_template() == DEFAULT_CHAT_TEMPLATE
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chat.default_chat_template()
    assert caught == []


# ---- rendering like transformers ------------------------------------------------------------------------

FEATURE_TEMPLATE = """{%- set ns = namespace(turns=0) %}
{% for m in messages %}
    {% if m.role == 'system' %}{% continue %}{% endif %}
    {% set ns.turns = ns.turns + 1 %}
    [{{ ns.turns }}] {{ m.role | upper }}: {% if m.content is string %}{{ m.content }}{% else %}{{ m.content | tojson }}{% endif %}

    {% generation %}{{ eos_token }}{% endgeneration %}
    {% if loop.index > 3 %}{% break %}{% endif %}
{% endfor %}
{{ bos_token }}|{{ image_token | default('none') }}|{{ tools is none }}|{{ documents is none }}
{% if add_generation_prompt %}GEN{% endif %}
{{ strftime_now('%d') | length }} {{ {'k': 'é<&>'} | tojson(indent=1, sort_keys=True) }}
"""


@pytest.fixture(scope="module")
def hf_tokenizer():
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": 3}
    backend = BackendTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


MESSAGE_LISTS = [TEXT_ONLY, ONE_IMAGE, THREE_IMAGES_TWO_TURNS, WITH_SYSTEM,
                 WITH_SYSTEM + THREE_IMAGES_TWO_TURNS + [{"role": "assistant", "content": "Done."}]]


@pytest.mark.parametrize("template", [DEFAULT_CHAT_TEMPLATE, FEATURE_TEMPLATE], ids=["default", "features"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_matches_transformers(hf_tokenizer, template, add_generation_prompt):
    variables = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    for messages in MESSAGE_LISTS:
        for extra in ({}, {"image_token": "<image>"}):
            ours = render_chat(template, messages, add_generation_prompt=add_generation_prompt, **variables, **extra)
            theirs = hf_tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt, **extra)
            assert ours == theirs
    # Sanity: the feature template really exercised its features.
    out = render_chat(FEATURE_TEMPLATE, WITH_SYSTEM, **variables)
    assert '[1] USER: [{"type": "text", "text": "Hi <b>é</b> \\"q\\""}]\n</s>' in out
    assert out.endswith('\n</s><s>|none|True|True\nGEN2 {\n "k": "é<&>"\n}')


def test_render_errors():
    with pytest.raises(InputError, match="only user and assistant"):
        render_chat("{% if messages[0].role == 'system' %}{{ raise_exception('only user and assistant') }}"
                    "{% endif %}", WITH_SYSTEM)
    with pytest.raises(InputError, match="TemplateSyntaxError"):
        render_chat("{% for m in messages %}", TEXT_ONLY)
    with pytest.raises(InputError, match="UndefinedError"):
        render_chat("{{ messages[0].content.missing.deeper }}", TEXT_ONLY)
    with pytest.raises(InputError, match="must be a str"):
        render_chat(None, TEXT_ONLY)


# ---- normalizing messages -------------------------------------------------------------------------------


def test_normalize_messages_forms():
    image_obj = object()
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "name": "ann", "content": [
            {"type": "image", "image": image_obj}, {"type": "image", "path": "/p.png"},
            {"type": "image_url", "image_url": "data:image/png;base64,AAAA"}, {"type": "image"},
            {"type": "text", "text": "T"}]},
        {"role": "assistant", "content": None},
    ]
    normalized, images = normalize_messages(messages)
    assert images == [image_obj, "/p.png", "data:image/png;base64,AAAA", None]
    assert normalized == [
        {"role": "system", "content": [{"type": "text", "text": "S"}]},
        {"role": "user", "name": "ann", "content": [{"type": "image"}] * 4 + [{"type": "text", "text": "T"}]},
        {"role": "assistant", "content": []},
    ]
    assert messages[0]["content"] == "S"  # the input is not modified


@pytest.mark.parametrize("messages, message", [
    ("hello", "must be a list"),
    ([{"content": "no role"}], "has no 'role'"),
    (["not a dict"], "expected a dict"),
    ([{"role": "user", "content": 5}], "content must be a string or a list"),
    ([{"role": "user", "content": [{"type": "video", "video": "v.mp4"}]}], "unknown part"),
    ([{"role": "user", "content": ["plain string part"]}], "unknown part"),
    ([{"role": "user", "content": [{"type": "text", "text": None}]}], "needs a string 'text'"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "needs image_url"),
    ([{"role": "assistant", "content": [{"type": "image", "image": "x.png"}]}], "only supported in user"),
])
def test_normalize_messages_errors(messages, message):
    with pytest.raises(InputError, match=message):
        normalize_messages(messages)
