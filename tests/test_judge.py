"""Judges: the rule judge, and the reward-model endpoint against a real local HTTP server whose
reply depends on the request (so order, retries, bounds and failures are observable)."""

import collections
import json
import textwrap
import socket
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlft import judge
from rlft.errors import UserError
from rlft.stats import win_rate
from rlft.tasks import ifcheck

TINY = 0.001  # retry backoff in tests: real retries, no real waiting
DRIP, DRIP_FOR = 0.25, 40.0  # the dripping modes: a byte every DRIP s, for at most DRIP_FOR s
KEY_ENV = "RLFT_TEST_JUDGE_KEY"


def length_reward(text: str) -> float:
    """What the test server's "length" mode scores a response: its length less 10.5 (negative for
    short answers, as Nemotron's rewards often are)."""
    return len(text) - 10.5


@pytest.fixture(autouse=True)
def no_proxy_no_key(monkeypatch):
    """A proxy in the environment must not intercept 127.0.0.1, and no real key may leak in."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def _serve(redirect_to: str | None = None):
    """A chat-completions endpoint on 127.0.0.1; the first path segment picks how it behaves:
      length    reward from the assistant content's length (small varying delays reorder replies)
      echo      the assistant content itself as the reply
      flaky503  HTTP 503 twice, then length (flaky429: the same with 429)
      down      always HTTP 500
      bad400    always HTTP 400
      notjson   200 with an HTML body
      slow      length after 0.1 s, counting requests in flight
      auth      length if Authorization is "Bearer sekrit", else 401
      hang      answers after 2 s
      held      answers only once the test has ended
      limited-S each response: HTTP 429 with "Retry-After: S" twice, then length; the response
                "boom" is answered HTTP 500 once first (S may be "none": no Retry-After header)
      quota     always HTTP 429 with "Retry-After: 0"
      pace      "a": HTTP 429 with "Retry-After: 0.25" once; "b": length after 0.1 s; others: length
      moved-C   HTTP C (301, 302, 303, 307, 308) to `redirect_to` (another server's length endpoint)
      dripbody  headers at once, then the body one byte every DRIP s (never the whole of it)
      driphead  the status line, then header bytes one every DRIP s (never the end of the headers)
    GETs (what urllib turns a redirected POST into) are recorded too, with their headers.
    Yields (root URL, state with per-mode call counts, the peak in flight and the requests seen).
    After each test, checks that no request ever carried a system turn (every prompt here has one)."""
    state = types.SimpleNamespace(lock=threading.Lock(), calls=collections.Counter(), in_flight=0, peak=0,
                                  seen=[], per_text=collections.Counter(), stop=threading.Event())

    class Endpoint(BaseHTTPRequestHandler):
        def do_GET(self):
            with state.lock:
                state.seen.append({"mode": "GET", "path": self.path, "body": None,
                                   "auth": self.headers.get("Authorization"), "t": time.monotonic()})
            self.reply(405, b'{"error": "POST only"}')

        def do_POST(self):
            mode, _, rest = self.path.strip("/").partition("/")
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.calls[mode] += 1
                n = state.calls[mode]
                text = body["messages"][-1]["content"]
                state.per_text[mode, text] += 1
                n_text = state.per_text[mode, text]
                state.seen.append({"mode": mode, "path": rest, "body": body, "auth": self.headers.get("Authorization"),
                                   "t": time.monotonic()})
                state.in_flight += 1
                state.peak = max(state.peak, state.in_flight)
            if mode.startswith("drip"):
                return self.drip(mode)
            try:
                status, payload, *headers = self.answer(mode, n, text, n_text)
            finally:
                with state.lock:
                    state.in_flight -= 1
            self.reply(status, payload, *headers)

        def answer(self, mode: str, n: int, text: str, n_text: int) -> tuple:
            def chat(content: str) -> bytes:
                message = {"role": "assistant", "content": content}
                return json.dumps({"choices": [{"index": 0, "message": message}]}).encode()

            if mode == "length":
                time.sleep(0.003 * (len(text) % 4))
                return 200, chat(f"reward:{length_reward(text)}")
            if mode == "echo":
                return 200, chat(text)
            if mode.startswith("flaky"):
                return (int(mode[5:]), b'{"error": "busy"}') if n <= 2 else (200, chat(f"reward:{length_reward(text)}"))
            if mode == "down":
                return 500, b'{"error": "model crashed"}'
            if mode == "bad400":
                return 400, b'{"error": "messages malformed"}'
            if mode == "notjson":
                return 200, b"<html>oops</html>"
            if mode == "slow":
                time.sleep(0.1)
                return 200, chat(f"reward:{length_reward(text)}")
            if mode == "auth":
                ok = self.headers.get("Authorization") == "Bearer sekrit"
                return (200, chat(f"reward:{length_reward(text)}")) if ok else (401, b'{"error": "bad key"}')
            if mode == "held":  # until the test ends: a judge that never answers in time
                state.stop.wait(60)
                with state.lock:
                    state.calls["held answered"] += 1
            if mode == "hang":
                time.sleep(2)
                return 200, chat("reward:0")
            if mode.startswith("limited-"):
                after = mode.partition("-")[2]
                if text == "boom" and n_text == 1:
                    return 500, b'{"error": "model crashed"}'
                if n_text <= 2 + (text == "boom"):
                    return 429, b'{"error": "rate limit"}', {} if after == "none" else {"Retry-After": after}
                return 200, chat(f"reward:{length_reward(text)}")
            if mode == "pace":
                if text == "a" and n_text == 1:
                    return 429, b'{"error": "rate limit"}', {"Retry-After": "0.25"}
                time.sleep(0.1 if text == "b" else 0)
                return 200, chat(f"reward:{length_reward(text)}")
            if mode.startswith("moved-"):
                return int(mode[6:]), b"{}", {"Location": f"{redirect_to}/chat/completions"}
            if mode == "quota":
                return 429, b'{"error": "quota exhausted"}', {"Retry-After": "0"}
            return 404, b"{}"

        def drip(self, mode: str):
            """Never finishes: a byte every DRIP s until the client goes away (or DRIP_FOR s pass, so a
            judge that waits for ever fails this test instead of hanging it)."""
            with state.lock:
                state.in_flight -= 1
            try:
                if mode == "dripbody":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                     b"Content-Length: 100000\r\n\r\n")
                else:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Pad: ")
                end = time.monotonic() + DRIP_FOR
                while time.monotonic() < end and not state.stop.wait(DRIP):
                    self.wfile.write(b" ")
            except (BrokenPipeError, ConnectionResetError):  # the judge gave up: what it should do
                pass
            self.close_connection = True

        def reply(self, status: int, payload: bytes, headers: dict | None = None):
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out first ("hang")
                pass

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)  # quick shutdown
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    state.stop.set()
    httpd.shutdown()
    httpd.server_close()
    # the paper's judge is sent the user turn and the assistant turn only
    assert all([m["role"] for m in req["body"]["messages"]] == ["user", "assistant"] for req in state.seen
               if req["body"] is not None)


@pytest.fixture
def other_server():
    """A second endpoint, on another port: where `server`'s moved-C modes point."""
    yield from _serve()


@pytest.fixture
def server(other_server):
    yield from _serve(redirect_to=f"{other_server[0]}/length")




def prompts_for(n: int) -> list[list[dict]]:
    return [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"question {i}"}]
            for i in range(n)]


def scores(base: str, responses: list[str], **kwargs) -> list[float]:
    kwargs.setdefault("backoff", TINY)
    return judge.endpoint_scores(prompts_for(len(responses)), responses, base, "nemotron-test", **kwargs)


# --------------------------------------------------------------------------- endpoint: results

def test_scores_come_back_in_input_order(server):
    root, state = server
    responses = ["x" * n for n in [17, 3, 29, 1, 8, 22, 5, 11, 40, 2, 13, 9]]
    assert scores(f"{root}/length", responses, concurrency=4) == [length_reward(r) for r in responses]
    assert state.calls["length"] == len(responses)


def test_request_is_the_user_turn_and_the_response_only(server):
    root, state = server
    scores(f"{root}/length/", ["an answer"])  # a trailing slash on base_url is fine; the prompt has a system turn
    (req,) = state.seen
    assert req["path"] == "chat/completions"
    assert req["body"] == {"model": "nemotron-test", "messages": [
        {"role": "user", "content": "question 0"}, {"role": "assistant", "content": "an answer"}]}
    assert req["auth"] is None  # no key in the environment: no Authorization header


def test_multi_turn_prompt_sends_its_last_user_turn(server):
    root, state = server
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "first"},
              {"role": "assistant", "content": "earlier answer"}, {"role": "user", "content": "follow-up"}]
    judge.endpoint_scores([prompt], ["an answer"], f"{root}/length", "m", backoff=TINY)
    assert state.seen[0]["body"]["messages"] == [{"role": "user", "content": "follow-up"},
                                                 {"role": "assistant", "content": "an answer"}]


def test_prompt_without_a_user_turn_is_refused_before_sending(server):
    root, state = server
    with pytest.raises(UserError, match=f"judge endpoint {root}/length: sample 1 has no user turn"):
        judge.endpoint_scores([prompts_for(1)[0], [{"role": "system", "content": "s"}]], ["a", "b"],
                              f"{root}/length", "m", backoff=TINY)
    assert not state.seen


@pytest.mark.parametrize("content,expected", [
    ("reward:-12.5", -12.5), ("reward: 3", 3.0), ("  reward:+1.5e1\n", 15.0), ("reward:0.25E-2", 0.0025),
])
def test_reward_formats_parse(server, content, expected):
    root, _ = server
    assert scores(f"{root}/echo", [content]) == [expected]


def test_empty_input_sends_nothing(server):
    root, state = server
    assert scores(f"{root}/length", []) == []
    assert not state.calls


# --------------------------------------------------------------------------- endpoint: retries

@pytest.mark.parametrize("status", [503, 429])
def test_busy_server_is_retried_then_scores(server, status):
    root, state = server
    assert scores(f"{root}/flaky{status}", ["abc"], max_retries=3) == [length_reward("abc")]
    assert state.calls[f"flaky{status}"] == 3  # two refusals, one success


def test_rate_limits_wait_out_retry_after_on_their_own_budget(server):
    """Each response is refused 429 twice (Retry-After 0.15 s) and "boom" also 500 once: with
    max_retries=1 every score still comes back, no retry comes before its Retry-After, and the
    500 is retried within max_retries."""
    root, state = server
    responses = ["abc", "boom", "a longer one", "xy", "fifth", "sixth answer"]
    assert scores(f"{root}/limited-0.15", responses, max_retries=1, concurrency=3) == [
        length_reward(r) for r in responses]
    assert state.calls["limited-0.15"] == 3 * len(responses) + 1
    for text in responses:
        times = [req["t"] for req in state.seen if req["body"]["messages"][-1]["content"] == text]
        refused = times[1:3] if text == "boom" else times[:2]  # the 429s; each is followed by a retry
        for t in refused:
            assert min(u for u in times if u > t) - t >= 0.15


def test_retry_after_holds_every_worker_not_only_the_refused_one(server):
    """Two workers: "a" is refused with Retry-After 0.25 s; the other worker finishes "b" at ~0.1 s
    and must still wait out the 0.25 s before sending "c" (the limit is on the client)."""
    root, state = server
    assert scores(f"{root}/pace", ["a", "b", "c"], concurrency=2) == [length_reward(t) for t in "abc"]
    sent = {}
    for req in state.seen:
        sent.setdefault(req["body"]["messages"][-1]["content"], req["t"])
    assert sent["c"] - sent["a"] >= 0.25


def test_retry_after_is_capped_and_backoff_used_without_one(server):
    root, state = server
    start = time.monotonic()
    assert scores(f"{root}/limited-3600", ["abc", "de"], max_retry_after=0.01) == [length_reward("abc"),
                                                                                 length_reward("de")]
    assert scores(f"{root}/limited-none", ["abc"], max_retries=0) == [length_reward("abc")]
    assert time.monotonic() - start < 300  # a hang guard: an hour's Retry-After would take 3,600 s per retry
    assert state.calls["limited-3600"] == 6 and state.calls["limited-none"] == 3


def test_rate_limit_that_never_lifts_gives_up_naming_the_url(server):
    root, state = server
    with pytest.raises(UserError) as e:
        scores(f"{root}/quota", ["abc"], rate_limit_retries=2, max_retries=5)
    assert state.calls["quota"] == 3
    msg = str(e.value)
    assert f"{root}/quota" in msg and "HTTP 429" in msg and "rate_limit_retries" in msg and "\n" not in msg


def test_server_error_gives_up_after_max_retries_naming_the_url(server):
    root, state = server
    with pytest.raises(UserError) as e:
        scores(f"{root}/down", ["abc"], max_retries=2)
    assert state.calls["down"] == 3  # the first try and two retries
    msg = str(e.value)
    assert f"{root}/down" in msg and "HTTP 500" in msg and "model crashed" in msg and "\n" not in msg


def test_client_error_is_not_retried(server):
    root, state = server
    with pytest.raises(UserError, match="HTTP 400.*messages malformed"):
        scores(f"{root}/bad400", ["abc"], max_retries=3)
    assert state.calls["bad400"] == 1


def test_closed_port_is_unreachable_fast():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}/v1"
    start = time.monotonic()
    with pytest.raises(UserError, match=f"^judge endpoint {base} unreachable: "):
        scores(base, ["abc", "def"], max_retries=2)
    assert time.monotonic() - start < 30  # refused at once, not 3 x the 60 s timeout (a hang guard, not a timing)


def test_timeout_is_retried_then_unreachable(server):
    root, state = server
    with pytest.raises(UserError, match=f"judge endpoint {root}/hang unreachable: timed out.*timeout=0.2 s"):
        scores(f"{root}/hang", ["abc"], timeout=0.2, max_retries=1)
    assert state.calls["hang"] == 2


@pytest.mark.parametrize("mode", ["dripbody", "driphead"])
def test_an_endpoint_that_drips_is_given_up_on_at_the_timeout(server, mode):
    """A reply dribbling a byte every 0.25 s never trips a per-read timeout of 1 s; the judge's
    timeout bounds each attempt as a whole, so it gives up, naming the URL and the timeout."""
    root, state = server
    start = time.monotonic()
    with pytest.raises(UserError) as e:
        scores(f"{root}/{mode}", ["abc"], timeout=1.0, max_retries=1)
    assert time.monotonic() - start < DRIP_FOR - 10  # a hang guard: the server drips for DRIP_FOR s
    msg = str(e.value)
    assert msg.startswith(f"judge endpoint {root}/{mode} unreachable: timed out")
    assert "timeout=1 s" in msg and "after 2 attempts" in msg and "\n" not in msg
    assert state.calls[mode] == 2  # a timeout is retried like any failure


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_refused_and_the_key_never_leaves_for_another_origin(server, other_server, monkeypatch,
                                                                           status):
    """Endpoint A answers with a redirect to B on another port: B must never see the API key (it
    sees nothing at all: rlft refuses the redirect), and the line names both URLs."""
    root, state = server
    other, other_state = other_server
    monkeypatch.setenv(KEY_ENV, "sekrit")
    with pytest.raises(UserError) as e:
        scores(f"{root}/moved-{status}", ["abc"], api_key_env=KEY_ENV, max_retries=2)
    assert not [req for req in other_state.seen if req["auth"]], other_state.seen
    assert not other_state.seen
    msg = str(e.value)
    assert f"{root}/moved-{status}/chat/completions" in msg and f"{other}/length/chat/completions" in msg
    assert f"HTTP {status}" in msg and "sekrit" not in msg and "\n" not in msg
    assert state.calls[f"moved-{status}"] == 1  # not retried: a redirect stays a redirect


# --------------------------------------------------------------------------- endpoint: bad replies

def test_an_interrupt_returns_at_once_leaving_the_requests_in_flight(server):
    """A second SIGTERM or Ctrl-C raises in the main thread while workers wait on the endpoint: the
    run must stop then, not when the requests in flight come back (minutes with the defaults)."""
    import signal

    base, state = server

    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(Interrupted):
            scores(f"{base}/held", ["a", "b", "c"], concurrency=2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    with state.lock:
        assert state.calls["held"] == 2 and state.calls["held answered"] == 0  # two in flight, none back


def test_ctrl_c_during_judge_requests_exits_without_a_thread_traceback(server):
    """Ctrl-C in a process whose judge workers wait on the endpoint: the process exits at once, and
    Python prints no thread-shutdown traceback at exit (the workers are daemons nobody joins)."""
    import signal
    import subprocess
    import sys

    base, state = server
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from rlft.judge import endpoint_scores
        try:
            endpoint_scores([[{{"role": "user", "content": "q"}}]] * 3, ["a", "b", "c"], {base + "/held"!r},
                            "nemotron-test", concurrency=2)
        except KeyboardInterrupt:
            sys.exit(130)
        """)], stderr=subprocess.PIPE, text=True)
    try:
        while True:  # both workers' requests in flight
            with state.lock:
                if state.calls["held"] == 2:
                    break
            assert child.poll() is None, child.stderr.read()
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)  # a guard against a hang, not a speed bound
    finally:
        child.kill()
    assert child.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    with state.lock:
        assert state.calls["held answered"] == 0  # it did not wait for them


def test_unparsable_reward_names_the_sample_and_quotes_the_reply(server):
    root, _ = server
    bad = "no reward here " + "x" * 200
    with pytest.raises(UserError) as e:
        scores(f"{root}/echo", ["reward:1", "reward:2", bad, "reward:4"], concurrency=1)
    msg = str(e.value)
    assert f"{root}/echo" in msg and "sample 2" in msg
    assert repr(bad[:80]) in msg and bad[:81] not in msg


@pytest.mark.parametrize("hostile", [
    "reward:__import__('os').system('x')",
    "reward:1; __import__('os').system('x')",  # a valid prefix is not enough
    "reward:1e999",  # overflows to inf
    "reward:nan",
])
def test_hostile_reward_text_is_rejected_not_evaluated(server, monkeypatch, hostile):
    import os

    ran = []
    monkeypatch.setattr(os, "system", lambda cmd: ran.append(cmd) or 0)
    root, _ = server
    with pytest.raises(UserError, match="sample 0"):
        scores(f"{root}/echo", [hostile])
    assert not ran


def test_reply_that_is_not_chat_completions_names_the_sample(server):
    root, _ = server
    with pytest.raises(UserError, match=r"sample 0: '<html>oops</html>'"):
        scores(f"{root}/notjson", ["abc"])


def test_non_http_url_is_refused():
    with pytest.raises(UserError, match="http:// or https://"):
        scores("file:///etc", ["abc"])


def test_mismatched_lengths_are_refused(server):
    root, _ = server
    with pytest.raises(UserError, match="2 prompts but 1 responses"):
        judge.endpoint_scores(prompts_for(2), ["abc"], f"{root}/length", "m", backoff=TINY)


# --------------------------------------------------------------------------- endpoint: concurrency and keys

@pytest.mark.parametrize("concurrency", [1, 3])
def test_requests_in_flight_are_bounded_by_concurrency(server, concurrency):
    root, state = server
    responses = ["r" * n for n in range(1, 9)]
    assert scores(f"{root}/slow", responses, concurrency=concurrency) == [length_reward(r) for r in responses]
    assert state.peak <= concurrency
    if concurrency > 1:
        assert state.peak > 1  # requests really overlap


def test_api_key_comes_from_the_named_env_var(server, monkeypatch):
    root, state = server
    monkeypatch.setenv(KEY_ENV, "sekrit")
    assert scores(f"{root}/auth", ["abc"], api_key_env=KEY_ENV) == [length_reward("abc")]
    assert state.seen[-1]["auth"] == "Bearer sekrit"


def test_missing_key_401_says_to_set_the_env_var(server):
    root, state = server
    with pytest.raises(UserError, match=f"HTTP 401.*set {KEY_ENV}"):
        scores(f"{root}/auth", ["abc"], api_key_env=KEY_ENV, max_retries=3)
    assert state.calls["auth"] == 1  # a refused key is not retried


def test_wrong_key_401_names_the_env_var_not_the_key(server, monkeypatch):
    root, _ = server
    monkeypatch.setenv(KEY_ENV, "wrong-key")
    with pytest.raises(UserError, match=f"check the API key in {KEY_ENV}") as e:
        scores(f"{root}/auth", ["abc"], api_key_env=KEY_ENV)
    assert "wrong-key" not in str(e.value)


# --------------------------------------------------------------------------- win rate and the other judges

def test_win_rate_over_endpoint_scores_of_two_models(server):
    root, _ = server
    ours = ["a long answer", "short", "same length!", "a much longer answer here"]
    reference = ["short", "a long answer", "equal sizes!", "mid answer"]
    result = win_rate(scores(f"{root}/length", ours, concurrency=2), scores(f"{root}/length", reference))
    assert (result["wins"], result["ties"], result["losses"]) == (2, 1, 1)
    assert result["win_rate"]["value"] == pytest.approx(2.5 / 4) and result["win_rate"]["n"] == 4


def test_rule_scores_are_the_tasks_verdict_per_sample():
    rows = ifcheck.preference_rows(30, seed=0)  # constraints as JSON strings, as ifcheck rows store them
    task = ifcheck.IfCheck()
    assert judge.rule_scores(task, [row["chosen"] for row in rows], rows) == [1.0] * 30
    parsed = [{**row, "constraints": json.loads(row["constraints"])} for row in rows]
    rejected = judge.rule_scores(task, [row["rejected"] for row in rows], parsed)
    assert rejected == [ifcheck.judge(row["rejected"], json.loads(row["constraints"])) for row in rows]
    assert all(s < 1.0 for s in rejected)
    result = win_rate(judge.rule_scores(task, [row["chosen"] for row in rows], rows), rejected)
    assert result["wins"] == 30


def test_judges_refuse_unpaired_inputs_before_scoring():
    with pytest.raises(UserError, match="rule judge: 2 rows but 1 responses"):
        judge.rule_scores(ifcheck.IfCheck(), ["a"], [{"constraints": [{"kind": "caps"}]}] * 2)
    with pytest.raises(UserError, match="reward-model judge: 1 prompts but 2 responses"):
        judge.reward_model_scores(None, None, prompts_for(1), ["a", "b"], "chat", 64)


# --------------------------------------------------------------------------- endpoint: the score cache

def cache_lines(directory) -> list[dict]:
    return [json.loads(line) for line in (directory / "endpoint-scores.jsonl").read_text().splitlines()]


def test_cache_makes_a_rerun_pay_only_for_new_pairs(server, tmp_path, monkeypatch):
    root, state = server
    monkeypatch.setenv(KEY_ENV, "sekrit")
    first = ["one", "two!", "three", "four.."]
    assert scores(f"{root}/length", first, cache=str(tmp_path), api_key_env=KEY_ENV) == [length_reward(r)
                                                                                         for r in first]
    assert state.calls["length"] == 4
    assert scores(f"{root}/length", first, cache=str(tmp_path)) == [length_reward(r) for r in first]
    assert state.calls["length"] == 4  # all judged before: no request at all
    more = first[:2] + ["new one", "another new"]
    assert scores(f"{root}/length", more, cache=str(tmp_path)) == [length_reward(r) for r in more]
    assert state.calls["length"] == 6  # only the two new pairs
    assert sorted(req["body"]["messages"][-1]["content"] for req in state.seen[4:]) == ["another new", "new one"]
    other = judge.endpoint_scores(prompts_for(4), first, f"{root}/length", "another-judge", cache=str(tmp_path),
                                  backoff=TINY)
    assert other == [length_reward(r) for r in first] and state.calls["length"] == 10  # another model misses
    text = (tmp_path / "endpoint-scores.jsonl").read_text()
    assert "sekrit" not in text and "question" not in text and "one" not in text  # hashes and scores only
    assert len(cache_lines(tmp_path)) == 10


def test_cache_keeps_a_failed_runs_scores_and_never_an_unparsable_one(server, tmp_path):
    root, state = server
    with pytest.raises(UserError, match="sample 2"):
        scores(f"{root}/echo", ["reward:1", "reward:2", "no reward"], cache=str(tmp_path), concurrency=1)
    assert [row["score"] for row in cache_lines(tmp_path)] == [1.0, 2.0]
    assert scores(f"{root}/echo", ["reward:1", "reward:2"], cache=str(tmp_path)) == [1.0, 2.0]
    assert state.calls["echo"] == 3  # the rerun sent nothing


def test_cache_ignores_a_torn_last_line_and_non_finite_scores(server, tmp_path):
    root, state = server
    assert scores(f"{root}/length", ["abc", "defg"], cache=str(tmp_path)) == [length_reward("abc"),
                                                                            length_reward("defg")]
    path = tmp_path / "endpoint-scores.jsonl"
    good, second = path.read_text().splitlines()
    nan = json.dumps({**json.loads(second), "score": float("nan")})  # json writes NaN; it must not count
    path.write_text(f"{good}\n{nan}\n" + '{"key": "' + json.loads(second)["key"][:9])  # killed mid-line
    assert scores(f"{root}/length", ["abc", "defg"], cache=str(tmp_path)) == [length_reward("abc"),
                                                                            length_reward("defg")]
    assert state.calls["length"] == 3  # "defg" judged again, "abc" not
    assert scores(f"{root}/length", ["abc", "defg"], cache=str(tmp_path)) == [length_reward("abc"),
                                                                            length_reward("defg")]
    assert state.calls["length"] == 3  # the line appended after the torn one reads back


def test_endpoint_config_is_the_papers_judge_with_a_cache(server, tmp_path, monkeypatch):
    from rlft.config import build, compose

    root, state = server
    monkeypatch.setenv("RLFT_CACHE_DIR", str(tmp_path))
    cfg = compose(["judge=endpoint", f"judge.base_url={root}/length"])
    assert cfg.judge.model == "nvidia/llama-3.1-nemotron-70b-reward"
    score = build(cfg.judge.scorer)
    assert score(prompts_for(2), ["abc", "de"], None) == [length_reward("abc"), length_reward("de")]
    assert score(prompts_for(2), ["abc", "de"], None) == [length_reward("abc"), length_reward("de")]
    assert [req["body"]["model"] for req in state.seen] == ["nvidia/llama-3.1-nemotron-70b-reward"] * 2
    assert len(cache_lines(tmp_path / "judge")) == 2
    cfg = compose(["judge=endpoint", f"judge.base_url={root}/length", "judge.model=other", "judge.cache=null"])
    score = build(cfg.judge.scorer)
    score(prompts_for(1), ["abc"], None)
    score(prompts_for(1), ["abc"], None)
    assert [req["body"]["model"] for req in state.seen[2:]] == ["other"] * 2  # no cache: asked twice
