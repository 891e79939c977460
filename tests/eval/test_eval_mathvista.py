import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from zamba2vl.eval.data import EvalSample
from zamba2vl.eval.judge import OpenAICompatibleJudge
from zamba2vl.eval.scorers import Graded, MathVistaAccuracy
from zamba2vl.eval.scorers.mathvista import check


def row(i, **f):
    base = {"question": f"Q{i}", "task": "t", "skills": "['s']"}
    return EvalSample(i, {**base, **f})


MC = dict(question_type="multi_choice", answer_type="text", choices="['3', '4', '5']", answer="4", answer_option="B")
INT = dict(question_type="free_form", answer_type="integer", answer="12")


@pytest.mark.parametrize("fields,response,resolved", [
    (MC, "B", "B"), (MC, "(C) 5", "C"), (MC, "no idea", False), (INT, " 12 ", 12), (INT, "12.0", False),
    (INT, "The answer is 12", False), (INT, "13", False),  # a parsed but wrong number is not "resolved"
    (dict(INT, answer="0"), "0", 0),  # resolved to 0, which is falsy: treated as unresolved (reference quirk)
    (dict(question_type="free_form", answer_type="float", answer="1.5"), "1.50", 1.5),
])
def test_rule_extraction(fields, response, resolved):
    assert check(row(0, **fields), response, prefetch=True) == resolved


def test_text_answers_are_never_right_and_missing_spellings_read_as_nan():
    assert check(row(0, question_type="free_form", answer_type="text", answer="pi"), "pi", prefetch=False) is False
    # "" after the spreadsheet round trip is "nan", which contains the option text "a"
    mc = row(1, question_type="multi_choice", answer_type="text", choices="['a', 'b']", answer="a", answer_option="A")
    assert check(mc, "", prefetch=False) is True


def test_rules_only_then_judge_and_the_resolved_counts():
    rows = [Graded(row(0, **MC), "B"), Graded(row(1, **INT), "It is 12"), Graded(row(2, **INT), "twelve"),
            Graded(row(3, **INT), None, corrupt=True)]
    rules = MathVistaAccuracy().score(rows)
    assert rules.score == 25.0 and rules.extras["resolved_by_rules"] == 1
    judged = MathVistaAccuracy(judge=lambda s, p: {"1": "12", "2": None}[s.key]).score(rows)
    assert judged.score == 50.0 and judged.extras["resolved_by_judge"] == 1
    assert judged.metrics == {"Overall": 50.0, "s": 50.0, "t": 50.0}


class _Handler(BaseHTTPRequestHandler):
    seen = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((body, self.headers.get("Authorization")))
        if len(self.seen) == 1:  # the first try fails: the judge retries with a higher temperature
            self.send_response(500)
            self.end_headers()
            return
        reply = {"choices": [{"message": {"content": " 12\n"}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_openai_compatible_judge_against_a_local_server():
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        judge = OpenAICompatibleJudge(f"http://127.0.0.1:{server.server_port}/v1", "judge-model", api_key="k",
                                      timeout=5)
        assert judge(row(1, **INT), "I count twelve eggs") == "12"
    finally:
        server.shutdown()
    (first, auth), (second, _) = _Handler.seen
    assert auth == "Bearer k" and first["model"] == "judge-model"
    assert (first["temperature"], second["temperature"]) == (0.0, 0.5)
    assert "I count twelve eggs" in second["messages"][0]["content"]


def test_unreachable_judge_gives_up():
    judge = OpenAICompatibleJudge("http://127.0.0.1:9/v1", "m", retries=2, timeout=1)
    assert judge(row(1, **INT), "x") is None
