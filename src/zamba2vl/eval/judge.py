"""An optional LLM judge behind any OpenAI-compatible chat endpoint (a local server, a hosted API).

Used only for MathVista, only when asked for (`--judge-url`), and only for the responses the rules could
not resolve. Uses the standard library's HTTP client; no SDK needed.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from zamba2vl.eval.data import EvalSample, parse_literal_list

EXTRACTION_PROMPT = """You extract final answers from model responses to math questions about images.
Reply with the final answer only: an integer, a decimal number, an option letter (A, B, C, ...) for
multiple-choice questions, or a short text. No words around it, no units.

Question: {question}
{choices}Model response: {response}

Final answer:"""


class OpenAICompatibleJudge:
    def __init__(self, base_url: str, model: str, api_key: str | None = None, max_tokens: int = 128,
                 retries: int = 5, timeout: float = 60.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.max_tokens = model, api_key, max_tokens
        self.retries, self.timeout = retries, timeout

    def complete(self, prompt: str, temperature: float = 0.0) -> str | None:
        body = json.dumps({"model": self.model, "max_tokens": self.max_tokens, "temperature": temperature,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                reply = json.loads(resp.read().decode("utf-8"))
            return str(reply["choices"][0]["message"]["content"]).strip()
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError):
            return None

    def __call__(self, sample: EvalSample, response: str) -> str | None:
        """MathVista extraction: retry with rising temperature (0, 0.5, 1, ...) until the endpoint answers."""
        items = parse_literal_list(sample.fields.get("choices")) or []
        choices = "".join(f"({chr(65 + i)}) {c} " for i, c in enumerate(items))
        prompt = EXTRACTION_PROMPT.format(question=sample.question, response=response,
                                          choices=f"Choices: {choices.strip()}\n" if choices else "")
        for attempt in range(self.retries):
            out = self.complete(prompt, temperature=attempt * 0.5)
            if out is not None:
                return out
        return None


def judge_from_args(url: str | None, model: str | None, key_env: str) -> OpenAICompatibleJudge | None:
    if not url:
        return None
    return OpenAICompatibleJudge(url, model or "gpt-4o-mini", api_key=os.environ.get(key_env))
