"""Chat templates: finding the checkpoint's template, rendering it like transformers does, and our default.

Zamba2-VL's own template was not available (spec §3.2); `DEFAULT_CHAT_TEMPLATE` reconstructs the published
description of it and is used, with a one-time warning, when a checkpoint ships none.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from zamba2vl.errors import ConfigError, InputError

# For each message: a user turn is preceded by one image marker + "\n" per image part, then
# "<s>user\n" + its text parts + "</s>\n"; any other role is "<s>" + role + "\n" + text + "</s>" (no newline).
# A generation prompt is "<s>assistant\n". Content may be a string or a list of parts.
DEFAULT_CHAT_TEMPLATE = (
    "{%- set marker = image_token if image_token is defined else '<image>' -%}\n"
    "{%- for message in messages -%}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {%- set parts = [{'type': 'text', 'text': message['content']}] -%}\n"
    "    {%- else -%}\n"
    "        {%- set parts = message['content'] or [] -%}\n"
    "    {%- endif -%}\n"
    "    {%- if message['role'] == 'user' -%}\n"
    "        {%- for part in parts if part['type'] in ['image', 'image_url'] -%}\n"
    "            {{- marker ~ '\\n' -}}\n"
    "        {%- endfor -%}\n"
    "    {%- endif -%}\n"
    "    {{- '<s>' ~ message['role'] ~ '\\n' -}}\n"
    "    {%- for part in parts if part['type'] == 'text' -%}\n"
    "        {{- part['text'] -}}\n"
    "    {%- endfor -%}\n"
    "    {{- '</s>\\n' if message['role'] == 'user' else '</s>' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{- '<s>assistant\\n' -}}\n"
    "{%- endif -%}\n"
)

_warned_default = False


def default_chat_template() -> str:
    """`DEFAULT_CHAT_TEMPLATE`, warning once per process that the checkpoint's own template is missing."""
    global _warned_default
    if not _warned_default:
        _warned_default = True
        warnings.warn(
            "The checkpoint ships no chat template; using zamba2vl's reconstruction of Zamba2-VL's format "
            "(spec §3.2), which is unverified. Put the real template in chat_template.jinja to silence this.",
            UserWarning, stacklevel=3)
    return DEFAULT_CHAT_TEMPLATE


# --------------------------------------------------------------------------------------------------------------
# Finding the template

def _pick_template(value: Any, source: Path) -> str | None:
    """A template value is a string, or a list of {"name", "template"} of which we take "default"."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(t, Mapping) and "name" in t and "template" in t for t in value):
        named = {t["name"]: t["template"] for t in value}
        if "default" in named:
            return named["default"]
        raise ConfigError(f"{source} has chat templates named {sorted(named)} but none named 'default'; "
                          "rename the one to use to 'default'")
    raise ConfigError(f"{source}: chat_template must be a string or a list of {{name, template}}")


def _json_template(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    return _pick_template(data.get("chat_template") if isinstance(data, dict) else None, path)


def find_chat_template(folder: str | Path) -> tuple[str, str] | None:
    """(template, file name it came from) from a checkpoint folder, or None if it has none.

    Precedence, first found wins: `chat_template.jinja`, `chat_template.json` (`{"chat_template": ...}`),
    `processor_config.json`, `tokenizer_config.json`. The first three are the processor's sources in
    transformers' own order (what `processor.apply_chat_template` uses for a VLM); the tokenizer's template is the
    fallback. A list of named templates yields the one named "default".
    """
    folder = Path(folder)
    jinja_path = folder / "chat_template.jinja"
    if jinja_path.is_file():
        return jinja_path.read_text(encoding="utf-8"), jinja_path.name
    for name in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            template = _json_template(path)
            if template is not None:
                return template, name
    return None


# --------------------------------------------------------------------------------------------------------------
# Rendering

class _GenerationTag(jinja2.ext.Extension):
    """Accept `{% generation %}...{% endgeneration %}` (used by templates that mark assistant text) as a no-op."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Unlike jinja's own tojson: no HTML escaping, non-ASCII kept, same options as json.dumps.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_chat(template: str, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                **variables: Any) -> str:
    """Render `messages` with a Hugging Face chat template, in the environment transformers uses.

    `variables` become template variables, as transformers passes them: bos_token, eos_token, image_token, ...
    (`Tokenizer.apply_chat_template` fills them in). `tools` and `documents` default to None.
    """
    if not isinstance(template, str):
        raise InputError(f"chat template must be a str, got {type(template).__name__}")
    variables.setdefault("tools", None)
    variables.setdefault("documents", None)
    try:
        return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **variables)
    except jinja2.exceptions.TemplateError as e:
        raise InputError(f"chat template failed: {type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------------------------------------------
# Messages

_IMAGE_KEYS = ("image", "url", "path", "base64")  # where HF-style {"type": "image", ...} parts carry the image


def _image_source(part: Mapping[str, Any], where: str) -> Any:
    if part["type"] == "image_url":
        url = part.get("image_url")
        if isinstance(url, Mapping):
            url = url.get("url")
        if not isinstance(url, str):
            raise InputError(f"{where}: an image_url part needs image_url={{'url': ...}} (or a string)")
        return url
    return next((part[k] for k in _IMAGE_KEYS if part.get(k) is not None), None)


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """HF/OpenAI-style messages -> (messages with list-of-parts content, image sources in order of appearance).

    Content may be a string, None, or a list of parts: {"type": "text", "text": ...}, {"type": "image", "image": obj}
    (or "url"/"path"/"base64" in place of "image"), {"type": "image_url", "image_url": {"url": ...}}. Image parts
    become {"type": "image"}; their source (None when the image is passed separately) goes to the second list.
    Images are only accepted in user messages, where the template places them.
    """
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence):
        raise InputError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out: list[dict[str, Any]] = []
    images: list[Any] = []
    for i, message in enumerate(messages):
        where = f"message {i}"
        if not isinstance(message, Mapping):
            raise InputError(f"{where} is a {type(message).__name__}, expected a dict with 'role' and 'content'")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise InputError(f"{where} has no 'role' (expected 'system', 'user' or 'assistant')")
        content = message.get("content")
        if content is None:
            content = []
        elif isinstance(content, str):
            content = [{"type": "text", "text": content}]
        elif not isinstance(content, Sequence):
            raise InputError(f"{where}: content must be a string or a list of parts, got {type(content).__name__}")
        parts = []
        for j, part in enumerate(content):
            pwhere = f"{where}, part {j}"
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise InputError(f"{pwhere}: a text part needs a string 'text'")
                parts.append({"type": "text", "text": part["text"]})
            elif kind in ("image", "image_url"):
                if role != "user":
                    raise InputError(f"{pwhere}: images are only supported in user messages, not {role!r}")
                images.append(_image_source(part, pwhere))
                parts.append({"type": "image"})
            else:
                raise InputError(f"{pwhere}: unknown part {part!r}; expected type 'text', 'image' or 'image_url'")
        out.append({**message, "role": role, "content": parts})
    return out, images
