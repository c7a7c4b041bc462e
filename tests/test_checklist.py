"""ChecklistReward against a real local OpenAI-compatible HTTP judge (ThinkRL-Edit §3.3 in specs/thinkrl-edit.md).

The server below is deterministic and reads the request like a judge would:
- a question prompt ("...checklist...") for an instruction "Mention: a, b, c" answers
  {"questions": ["Does the result mention a?", ...]}; directives in the instruction change that: LISTONLY (a bare
  JSON list), GARBAGE (no questions), QFAIL (HTTP 400, which the judge does not retry -> None);
- an answer prompt ("Question: Does the result mention X?") answers "yes" when X appears in the result text, and a
  joint prompt (numbered questions) answers {"answers": [...]}; AFAIL in the result gives HTTP 400;
- "Is the image red?" is answered from the attached edited image: the PNG is decoded and its first pixel read.
"""

import base64
import json
import re
import struct
import threading
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from judge_server import closed_port_url

from rlpost.rewards import get_reward
from rlpost.rewards.checklist import ChecklistReward, image_to_data_url, parse_questions
from rlpost.rewards.judges import OpenAIJudge

PROMPT = "Mention: apple, pear, plum"


def _decode_png(data: bytes) -> list[list[tuple[int, int, int]]]:
    """Rows of RGB pixels from an 8-bit RGB PNG with filter 0 (what image_to_data_url writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF
        if tag == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 2)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = 1 + 3 * width
    rows = []
    for y in range(height):
        line = raw[y * stride : (y + 1) * stride]
        assert line[0] == 0
        rows.append([tuple(line[1 + 3 * x : 4 + 3 * x]) for x in range(width)])
    return rows


def _text_and_images(content) -> tuple[str, list[str]]:
    if isinstance(content, str):
        return content, []
    text = "".join(p.get("text", "") for p in content if p.get("type") == "text")
    urls = [p["image_url"]["url"] for p in content if p.get("type") == "image_url"]
    return text, urls


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, status: int, text: str = "") -> None:
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text, urls = _text_and_images(payload["messages"][-1]["content"])
        kind = "question" if "checklist" in text else "answer"
        with self.server.lock:
            self.server.counts[kind] += 1
            self.server.images[kind] += len(urls)
        if kind == "question":
            instruction = text.split("Instruction:\n", 1)[1].split("\n", 1)[0]
            if "QFAIL" in instruction:
                return self._reply(400)
            if "GARBAGE" in instruction:
                return self._reply(200, "I would rather not.")
            words = [w.strip() for w in instruction.split(":", 1)[1].split(",")]
            questions = ["Is the image red?" if w == "red image" else f"Does the result mention {w}?" for w in words]
            if urls:  # a source image came with the request: one more question about it
                questions.append("Does the result mention source?")
            answer = json.dumps(questions if "LISTONLY" in instruction else {"questions": questions})
            return self._reply(200, f"Sure:\n{answer}")
        result = text.split("Result:\n", 1)[1].split("\n\n", 1)[0]
        if "AFAIL" in result:
            return self._reply(400)

        def verdict(question: str) -> bool:
            if question.startswith("Is the image red?"):
                r, g, b = _decode_png(base64.b64decode(urls[-1].split(",", 1)[1]))[0][0]
                return r > 128 and g < 128 and b < 128
            return re.search(r"mention (\w+)\?", question).group(1) in result

        joint = re.findall(r"^\d+\. (.+)$", text, re.MULTILINE)
        if joint:
            return self._reply(200, json.dumps({"answers": ["yes" if verdict(q) else "no" for q in joint]}))
        question = text.split("Question: ", 1)[1]
        return self._reply(200, "Answer: yes" if verdict(question) else "**No.**")


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.lock, httpd.counts, httpd.images = threading.Lock(), Counter(), Counter()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _judge(url: str) -> OpenAIJudge:
    # the judge's own response cache is off so the server counts show the checklist cache at work
    return OpenAIJudge(url, model="judge", cache=False, max_retries=0, timeout_s=5.0, max_concurrency=4)


def test_text_scores_are_the_fraction_of_yes_and_questions_are_cached(server):
    reward = ChecklistReward(_judge(server.base_url), num_questions=6)
    completions = ["nothing here", "an apple", "apple and pear", "apple, pear, plum", "pear", ""]
    batch = {"prompt": [PROMPT] * 6, "completion": completions}
    out = reward(batch, [0, 0, 0, 1, 1, 1])
    # 3 questions (mention apple / pear / plum): 0/3, 1/3, 2/3, 3/3, 1/3, empty completion 0/3
    assert out.scores == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0, 1 / 3, 0.0], abs=1e-12)
    # both groups share the prompt text -> one question request; 6 samples x 3 questions answered one by one
    assert server.counts == {"question": 1, "answer": 18}
    assert out.metrics["question_cache_hits"] == 0 and out.metrics["questions"] == 3
    assert out.metrics["judge_failures"] == 0 and out.metrics["parse_failures"] == 0 and out.metrics["failures"] == 0
    assert out.columns["answers"][2] == "yes yes no"
    assert out.columns["questions"][0].splitlines() == [f"Does the result mention {w}?" for w in ("apple", "pear",
                                                                                                   "plum")]
    # the next step reuses the cached checklist: no new question request
    again = reward(batch, [4, 4, 4, 5, 5, 5])
    assert again.scores == out.scores and server.counts["question"] == 1
    assert again.metrics["question_cache_hits"] == 1


def test_each_group_uses_its_own_prompt_and_num_questions_cuts_the_list(server):
    reward = ChecklistReward(_judge(server.base_url), num_questions=2, cache=False)
    batch = {"prompt": [PROMPT, PROMPT, "Mention: kiwi, plum, fig"], "completion": ["plum", "apple", "plum"]}
    out = reward(batch, [0, 0, 1])
    # lists cut to 2: (apple, pear) and (kiwi, plum) -> 0/2, 1/2, 1/2
    assert out.scores == pytest.approx([0.0, 0.5, 0.5], abs=1e-12)
    assert server.counts == {"question": 2, "answer": 6}
    # cache=False: a second call asks for the questions again
    reward(batch, [0, 0, 1])
    assert server.counts["question"] == 4


def test_joint_answer_mode_and_chat_message_completions(server):
    reward = ChecklistReward(_judge(server.base_url), answer_mode="joint")
    completions = [[{"role": "assistant", "content": "pear and plum"}], [{"role": "assistant", "content": "none"}]]
    out = reward({"prompt": [PROMPT] * 2, "completion": completions}, [0, 0])
    # one answer request per sample holding all 3 questions: 2/3 and 0/3
    assert out.scores == pytest.approx([2 / 3, 0.0], abs=1e-12)
    assert server.counts == {"question": 1, "answer": 2}


def test_a_bare_json_list_of_questions_is_accepted(server):
    reward = ChecklistReward(_judge(server.base_url))
    out = reward({"prompt": ["LISTONLY Mention: fig, kiwi"], "completion": ["fig"]}, [0])
    assert out.scores == [0.5]


def test_judge_failures_and_parse_failures_give_none_and_are_counted(server):
    reward = ChecklistReward(_judge(server.base_url))
    batch = {
        "prompt": ["QFAIL Mention: fig", "GARBAGE Mention: fig", PROMPT, PROMPT],
        "completion": ["fig", "fig", "apple AFAIL", "apple"],
    }
    out = reward(batch, [0, 1, 2, 2])
    # group 0: question request fails (judge None); group 1: no questions in the answer (parse failure);
    # group 2: sample 2's three answer requests fail, sample 3 scores 1/3
    assert out.scores[:3] == [None, None, None] and out.scores[3] == pytest.approx(1 / 3, abs=1e-12)
    assert out.metrics["judge_failures"] == 1 + 3 and out.metrics["parse_failures"] == 1
    assert out.columns["answers"][2] == "? ? ?" and out.columns["questions"][0] == ""
    # failed checklists are not cached: the next call asks for them again (QFAIL, GARBAGE; PROMPT is cached)
    before = server.counts["question"]
    reward(batch, [0, 1, 2, 2])
    assert server.counts["question"] == before + 2


def test_a_down_judge_never_raises():
    reward = ChecklistReward(_judge(closed_port_url()))
    out = reward({"prompt": [PROMPT] * 3, "completion": ["apple"] * 3}, [0, 0, 1])
    # two distinct groups but one prompt text -> one failed question request; every sample None
    assert out.scores == [None, None, None]
    assert out.metrics["judge_failures"] == 1 and out.metrics["failures"] == 0


def test_image_mode_sends_source_and_edited_images_as_content_parts(server):
    reward = ChecklistReward(_judge(server.base_url), target="image")
    assert reward.requires == ("prompt", "image")
    red = torch.zeros(3, 4, 5)
    red[0] = 1.0
    blue = torch.zeros(3, 4, 5)
    blue[2] = 1.0
    source = torch.full((4, 5, 3), 128, dtype=torch.uint8)  # [H, W, 3] uint8 works too
    batch = {"prompt": ["Mention: red image"] * 3, "image": [red, blue, red], "source_image": [source, source, None]}
    out = reward(batch, [0, 0, 1])
    # group 0 has a source image -> questions (red?, mention source?): red 1/2, blue 0/2;
    # group 1 has none -> question (red?) only: 1/1
    assert out.scores == pytest.approx([0.5, 0.0, 1.0], abs=1e-12)
    # images sent: 1 source with group 0's question request; each answer carries source (if any) + edited image:
    # samples 0, 1: 2 questions x 2 images; sample 2: 1 question x 1 image
    assert server.images == {"question": 1, "answer": 9}


def test_image_to_data_url_round_trips_pixels(tmp_path):
    image = torch.tensor([[[1.0, 0.0]], [[0.5, 0.0]], [[0.0, 1.0]]])  # [3, 1, 2]: orange-ish, then blue
    url = image_to_data_url(image)
    assert url.startswith("data:image/png;base64,")
    # 0.5 * 255 = 127.5 rounds to 128
    assert _decode_png(base64.b64decode(url.split(",", 1)[1])) == [[(255, 128, 0), (0, 0, 255)]]
    assert image_to_data_url("https://example.com/a.png") == "https://example.com/a.png"
    path = tmp_path / "a.jpg"
    path.write_bytes(b"\xff\xd8jpeg")
    assert image_to_data_url(str(path)) == "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8jpeg").decode()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_to_data_url(str(tmp_path / "missing.png"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"questions": ["Is A?", "Is B?"]}', ["Is A?", "Is B?"]),
        ("```json\n{'questions': ['Is A?', 'Is B?',],}\n```", ["Is A?", "Is B?"]),  # near-JSON, repaired
        ('Here: ["Is A?", "Is B?", "Is C?"]', ["Is A?", "Is B?"]),  # bare list, cut to the limit of 2
        ("1. Is A?\n2) Is B?\n- not a question", ["Is A?", "Is B?"]),  # numbered lines ending in '?'
        ('{"questions": []}', None),
        ("no questions at all", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_questions_table(text, expected):
    assert parse_questions(text, limit=2) == expected


def test_configuration_errors_name_the_fix(server):
    judge = _judge(server.base_url)
    with pytest.raises(ValueError, match=r"missing \['question'\]"):
        ChecklistReward(judge, answer_prompt="Is it {response}?")
    with pytest.raises(ValueError, match=r"unknown \['prompt'\]"):
        ChecklistReward(judge, question_prompt="{instruction} {num_questions} {prompt}")
    with pytest.raises(ValueError, match="answer_mode"):
        ChecklistReward(judge, answer_mode="both")
    with pytest.raises(ValueError, match="num_questions"):
        ChecklistReward(judge, num_questions=0)
    with pytest.raises(ValueError, match="target"):
        ChecklistReward(judge, target="video")
    with pytest.raises(TypeError, match="complete"):
        ChecklistReward(lambda prompt: "yes")


def test_registry_and_judge_from_options(server):
    reward = get_reward("checklist", judge={"base_url": server.base_url, "model": "judge", "max_retries": 0})
    assert isinstance(reward, ChecklistReward) and isinstance(reward.judge, OpenAIJudge)
    assert reward.granularity == "groupwise" and reward.requires == ("prompt", "completion")
    assert reward({"prompt": [PROMPT], "completion": ["plum"]}, [0]).scores == pytest.approx([1 / 3], abs=1e-12)
