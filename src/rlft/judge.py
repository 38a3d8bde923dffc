"""Judges: one float score per (prompt, response), so two models can be compared by win rate.

    from rlft import judge, stats
    url, rm = "https://integrate.api.nvidia.com/v1", "nvidia/llama-3.1-nemotron-70b-reward"
    ours = judge.endpoint_scores(prompts, our_responses, url, rm, cache="~/.cache/rlft/judge")
    ref = judge.endpoint_scores(prompts, reference_responses, url, rm, cache="~/.cache/rlft/judge")
    stats.win_rate(ours, ref)     # the paper's win rate against Qwen2.5-0.5B-Instruct

Three judges, one per kind of evidence:
  rule_scores          the data's task (rlft.tasks: ifcheck's rules, IFEval's checkers; exact, no model)
  reward_model_scores  a local reward model through reward_models.score (the same contract as training)
  endpoint_scores      a reward model served behind an OpenAI-compatible chat-completions endpoint
                       that answers "reward:<float>", as the paper used Llama-3.1-Nemotron-70B-Reward:
                       sent the user turn and the assistant turn only, 429s waited out (Retry-After),
                       each attempt bounded as a whole by `timeout`, redirects refused (the key stays home),
                       scores cached on disk by (model id, messages sent) so a rerun pays only for new pairs

endpoint_scores uses the standard library only (urllib, a thread pool). Not the `openai` client: it follows
redirects by default, and httpx bounds each read, never a whole request (a byte every 0.25 s never times out).
The reply is parsed with one strict regex and never evaluated; an endpoint is untrusted input.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from rlft import preflight, reward_models
from rlft.errors import UserError
from rlft.tasks import Task

# The whole reply must be "reward:<float>": a prefix match would accept "reward:1; anything".
REWARD = re.compile(r"reward:\s*([-+]?\d+(\.\d+)?([eE][-+]?\d+)?)")
MAX_REPLY_BYTES = 1 << 20  # a reward reply is tens of bytes; cap what a broken endpoint can make us hold


def _same_length(inputs: list, responses: list, what: str, inputs_name: str = "prompts") -> None:
    # reward_models.score zips without strict=True: a short list would silently drop samples from a win rate.
    if len(inputs) != len(responses):
        raise UserError(f"{what}: {len(inputs)} {inputs_name} but {len(responses)} responses; "
                        "they must pair up one to one")


def rule_scores(task: Task, responses: list[str], rows: list[dict]) -> list[float]:
    """A task's verdict score per sample (rlft.tasks: ifcheck's fraction of constraints met, IFEval's
    fraction of instructions followed, Countdown's verifier), from each held-out row."""
    _same_length(rows, responses, "rule judge", "rows")
    return [task.verdict(r, row).score for r, row in zip(responses, rows)]


@preflight.timed
def reward_model_scores(model, tokenizer, prompts: list[list[dict]], responses: list[str], fmt: str, max_length: int,
                        batch_size: int = 32) -> list[float]:
    """A local reward model's scores through reward_models.score, so a judge sees inputs encoded exactly
    as the reward model was trained on them (prompts are chat messages [{"role", "content"}])."""
    _same_length(prompts, responses, "reward-model judge")
    return reward_models.score(model, tokenizer, prompts, responses, fmt, max_length, batch_size)


@preflight.timed
def endpoint_scores(prompts: list[list[dict]], responses: list[str], base_url: str, model: str,
                    api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0, max_retries: int = 3,
                    concurrency: int = 8, backoff: float = 0.5, rate_limit_retries: int = 20,
                    max_retry_after: float = 60.0, cache: str | None = None) -> list[float]:
    """Scores from a reward model behind an OpenAI-compatible endpoint, in input order.

    Each sample is one POST {base_url}/chat/completions with the prompt's last user turn and the
    response as the assistant turn, nothing else (judge_messages); the reply's
    choices[0].message.content must be "reward:<float>".

    Each attempt gets `timeout` seconds in all, connect and every read of the reply together, so an
    endpoint that answers a byte at a time cannot stall a run. Connection errors, timeouts and 5xx
    are retried up to `max_retries` times with exponential backoff (backoff, 2*backoff, ...): a 70B
    judge behind a shared server drops requests under load. Redirects are refused with a line naming
    both URLs, never followed: urllib would resend the API key to wherever the endpoint points.
    HTTP 429 is the server pacing us, not failing, so it has its own, larger budget
    (`rate_limit_retries`): the wait is the reply's Retry-After (seconds) or else the exponential
    backoff, capped at `max_retry_after`, and every worker holds off for it, not only the one told.
    Any other 4xx fails at once, since repeating a rejected request cannot help. At most
    `concurrency` requests are in flight. The API key comes from the environment, never the config,
    so it stays out of config.yaml in the run dir.

    With `cache` (a directory), scores are read from and appended to cache/endpoint-scores.jsonl,
    keyed by (model, messages as sent), so a rerun only pays for pairs not judged before.
    """
    _same_length(prompts, responses, f"judge endpoint {base_url}")
    if not base_url.startswith(("http://", "https://")):
        # urllib would also open file:// and ftp:// URLs; a judge is only ever an HTTP service.
        raise UserError(f"judge endpoint {base_url!r} must start with http:// or https://")
    if concurrency < 1 or max_retries < 0 or rate_limit_retries < 0 or max_retry_after < 0:
        raise UserError(f"judge endpoint {base_url}: concurrency must be >= 1 and max_retries, rate_limit_retries "
                        f"and max_retry_after >= 0 (got {concurrency}, {max_retries}, {rate_limit_retries} and "
                        f"{max_retry_after})")
    if not prompts:
        return []
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    key = os.environ.get(api_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"

    messages = [judge_messages(p, r, base_url, i) for i, (p, r) in enumerate(zip(prompts, responses))]
    keys = [_cache_key(model, m) for m in messages]
    store = ScoreCache(cache) if cache else None
    known = store.read() if store else {}
    todo = {k: i for i, k in reversed(list(enumerate(keys))) if k not in known}  # key -> its first sample
    pause = _Pause()

    def one(i: int) -> float:
        body = json.dumps({"model": model, "messages": messages[i]}).encode()
        raw = _post(url, body, headers, timeout, max_retries, rate_limit_retries, backoff, max_retry_after, pause,
                    base_url, api_key_env, key)
        content = _content(raw, base_url, i)
        m = REWARD.fullmatch(content.strip())
        value = float(m.group(1)) if m else math.nan
        if not math.isfinite(value):  # no match, or an overflow such as 1e999
            raise UserError(f"judge endpoint {base_url} gave no parsable reward for sample {i}: {content[:80]!r}")
        if store:
            store.add(keys[i], model, value)  # as each arrives: a killed run keeps what it paid for
        return value

    if todo:
        try:
            known |= _fan_out(one, todo, concurrency)
        finally:
            if store:
                store.close()  # a worker left in flight after an interrupt reopens it to add its score
    return [known[k] for k in keys]


def _fan_out(one, todo: dict, concurrency: int) -> dict:
    """{key: one(i)} for todo's {key: i}, at most `concurrency` at once, in index order.

    The workers are daemon threads: when the caller is interrupted (a second SIGTERM or Ctrl-C
    raises in the main thread) this returns at once, the requests in flight abandoned, and the
    process never waits on them at exit. After the first failure no new request starts; the
    lowest-index failure among those finished is raised once the workers in flight are done."""
    queue = sorted(todo.items(), key=lambda item: item[1])
    lock, stop = threading.Lock(), threading.Event()
    results, errors = {}, {}

    def worker() -> None:
        while not stop.is_set():
            with lock:
                if not queue:
                    return
                k, i = queue.pop(0)
            try:
                value = one(i)
            except BaseException as e:  # noqa: BLE001  (handed to the main thread)
                with lock:
                    errors[i] = e
                stop.set()
                return
            with lock:
                results[k] = value

    threads = [threading.Thread(target=worker, name=f"rlft-judge-{n}", daemon=True)
               for n in range(min(concurrency, len(queue)))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.1)  # short joins: a signal's handler runs between them
    finally:
        stop.set()  # interrupted: nothing new starts; the workers in flight are left behind
    if errors:
        raise errors[min(errors)]
    return results


    return [known[k] for k in keys]


def judge_messages(prompt: list[dict], response: str, base_url: str = "", i: int = 0) -> list[dict]:
    """What the judge is sent for one sample: [the prompt's last user turn, the response as the
    assistant turn], as the paper sent Llama-3.1-Nemotron-70B-Reward. A system turn is dropped (the
    paper's judge never saw one; rlft's prompts carry "You are a helpful assistant."). Of a
    multi-turn prompt only the last user turn is kept: it is the one the response answers, and the
    judge's protocol is one user->assistant exchange."""
    users = [m for m in prompt if m.get("role") == "user"]
    if not users:
        raise UserError(f"judge endpoint {base_url}: sample {i} has no user turn to judge the response against")
    return [{"role": "user", "content": users[-1]["content"]}, {"role": "assistant", "content": response}]


def _post(url: str, body: bytes, headers: dict, timeout: float, max_retries: int, rate_limit_retries: int,
          backoff: float, max_retry_after: float, pause: _Pause, base_url: str, api_key_env: str,
          key: str | None) -> bytes:
    """The reply body of one POST, retrying what a busy, rate-limiting or restarting server may fix.
    Failures (connection, timeout, 5xx) and rate limits (429) are counted apart.

    `timeout` bounds each attempt as a whole, connect and every read together (_Deadline): urllib's
    own timeout is per socket operation, so a server dripping a byte a second would hold a worker,
    and the run, without bound. A redirect is never followed (_NoRedirect)."""
    failures = limited = 0
    while True:
        pause.wait()
        retry_after = None
        deadline = _Deadline(timeout)
        try:
            opener = urllib.request.build_opener(_NoRedirect, _DeadlineHTTPHandler(deadline),
                                                 _DeadlineHTTPSHandler(deadline))
            with opener.open(urllib.request.Request(url, data=body, headers=headers, method="POST"),
                             timeout=timeout) as reply:
                raw = reply.read(MAX_REPLY_BYTES)
            if deadline.expired:  # the socket was shut under the read: what came is a fragment
                raise TimeoutError
            return raw
        except urllib.error.HTTPError as e:  # before URLError: HTTPError is one
            with e:  # closes the connection it holds
                detail = _snippet(_read_quietly(e))
            if 300 <= e.code < 400:
                target = urllib.parse.urljoin(url, e.headers.get("Location", "") if e.headers else "")
                raise UserError(f"judge endpoint {base_url}: {url} redirects (HTTP {e.code}) to {target or '?'}; "
                                "rlft does not follow judge redirects (the API key would go with the request): "
                                "set judge.base_url to the endpoint's own URL") from None
            retry_after = _retry_after(e.headers.get("Retry-After") if e.headers else None)
            if e.code in (401, 403):
                hint = f"set {api_key_env} to a valid API key" if not key else f"check the API key in {api_key_env}"
                raise UserError(f"judge endpoint {base_url} refused the request (HTTP {e.code}): {hint}") from None
            if e.code == 429:
                limited += 1
                if limited > rate_limit_retries:
                    raise UserError(f"judge endpoint {base_url} still rate-limited (HTTP 429) after {limited} "
                                    "attempts; lower judge.scorer.concurrency or raise "
                                    f"judge.scorer.rate_limit_retries: {detail!r}") from None
                wait_s = retry_after if retry_after is not None else backoff * 2 ** (limited - 1)
                pause.hold(min(wait_s, max_retry_after))  # everyone waits: the limit is on us, not on this request
                continue
            if e.code < 500:
                raise UserError(f"judge endpoint {base_url} rejected the request (HTTP {e.code}): {detail!r}") from None
            failures += 1
            if failures > max_retries:
                raise UserError(f"judge endpoint {base_url} failed with HTTP {e.code} after {failures} "
                                f"attempts: {detail!r}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # TimeoutError is an OSError
            failures += 1
            if failures > max_retries:
                timed_out = isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError)
                if deadline.expired or timed_out:
                    raise UserError(f"judge endpoint {base_url} unreachable: timed out, no complete reply within "
                                    f"timeout={timeout:g} s (judge.scorer.timeout; after {failures} attempts)"
                                    ) from None
                reason = getattr(e, "reason", None) or e
                raise UserError(f"judge endpoint {base_url} unreachable: {reason} "
                                f"(after {failures} attempts)") from None
        finally:
            deadline.cancel()
        time.sleep(min(retry_after if retry_after is not None else backoff * 2 ** (failures - 1), max_retry_after))


def _read_quietly(reply) -> bytes:
    """An error reply's body (for the message), bounded; what a broken connection leaves is enough."""
    try:
        return reply.read(MAX_REPLY_BYTES) or b""
    except (OSError, http.client.HTTPException):
        return b""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: urllib would follow a 301/302/303 to any host and port, carrying the
    Authorization header (the API key) there, and as a GET without the body, so a judge reached
    through a redirect can never answer anyway. Dropping the header when the origin changes would
    trade a leak for a confusing 401 or 405 from the other end; naming both URLs lets the user fix
    judge.base_url once. With None here urllib raises the 3xx as an HTTPError, which _post reports."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class _Deadline:
    """One attempt's time limit over connect and all reads: at `seconds` it shuts the attempt's
    socket down, which ends any blocked connect or read at once (a TLS handshake included: the raw
    socket is watched from the moment it is connected)."""

    def __init__(self, seconds: float):
        self.lock = threading.Lock()
        self.socks: list = []
        self.expired = False
        self.timer = threading.Timer(seconds, self._expire)
        self.timer.daemon = True
        self.timer.start()

    def watch(self, sock) -> None:
        with self.lock:
            self.socks.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self.lock:
            self.expired = True
            for sock in self.socks:
                _shut(sock)

    def cancel(self) -> None:
        self.timer.cancel()


def _shut(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


def _watched(http_class, deadline: _Deadline):
    """http_class (HTTPConnection or HTTPSConnection) whose sockets `deadline` watches."""

    def make(*args, **kwargs):
        conn = http_class(*args, **kwargs)
        create = conn._create_connection  # socket.create_connection; the TLS wrap comes after it

        def create_and_watch(*a, **k):
            sock = create(*a, **k)
            deadline.watch(sock)
            return sock

        conn._create_connection = create_and_watch
        return conn

    return make


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class, req, **kwargs):
        return super().do_open(_watched(http_class, self.deadline), req, **kwargs)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class, req, **kwargs):
        return super().do_open(_watched(http_class, self.deadline), req, **kwargs)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (fractions allowed), or None when absent or not a number (an HTTP-date
    falls back to the exponential backoff)."""
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


class _Pause:
    """A time before which no worker sends: a 429's Retry-After is about this client, so all
    `concurrency` workers honour it, not only the one whose request was refused."""

    def __init__(self):
        self.lock = threading.Lock()
        self.until = 0.0  # time.monotonic()

    def hold(self, seconds: float) -> None:
        with self.lock:
            self.until = max(self.until, time.monotonic() + seconds)

    def wait(self) -> None:
        while (delay := self.until - time.monotonic()) > 0:
            time.sleep(delay)


def _cache_key(model: str, messages: list[dict]) -> str:
    # The messages hold the response as the assistant turn: the key is (model id, prompt as sent, response).
    return hashlib.sha256(json.dumps([model, messages], sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ScoreCache:
    """Judged scores on disk: one JSON line {"key", "model", "score"} per judged pair, appended with
    one write(2) on an O_APPEND file, so concurrent workers (and processes) never interleave bytes.
    A run killed mid-write leaves a torn last line: reading skips any line that does not parse to a
    finite score, and the next append starts on a fresh line. Only hashes and scores are stored,
    never the prompts, responses or the API key."""

    def __init__(self, directory: str):
        self.path = Path(directory).expanduser() / "endpoint-scores.jsonl"
        self.lock = threading.Lock()
        self.fd: int | None = None

    def read(self) -> dict[str, float]:
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise UserError(f"judge cache {self.path}: {e.strerror}") from None
        scores = {}
        for line in lines:
            try:
                row = json.loads(line)
                key, score = row["key"], row["score"]
            except (ValueError, KeyError, TypeError):
                continue  # a torn line from a killed run
            if isinstance(key, str) and type(score) in (int, float) and math.isfinite(score):
                scores[key] = score
        return scores

    def add(self, key: str, model: str, score: float) -> None:
        line = (json.dumps({"key": key, "model": model, "score": float(score)}) + "\n").encode()
        with self.lock:
            try:
                if self.fd is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
                    size = os.fstat(self.fd).st_size
                    if size and os.pread(self.fd, 1, size - 1) != b"\n":
                        line = b"\n" + line  # end the torn line, or this one would be lost with it
                os.write(self.fd, line)
            except OSError as e:
                raise UserError(f"judge cache {self.path}: {e.strerror}") from None

    def close(self) -> None:
        with self.lock:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None


def _content(raw: bytes, base_url: str, i: int) -> str:
    """choices[0].message.content of a chat-completions reply, or a UserError saying what came instead."""
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        content = None
    if not isinstance(content, str):
        raise UserError(f"judge endpoint {base_url} sent no chat-completions message for sample {i}: {_snippet(raw)!r}")
    return content


def _snippet(raw: bytes) -> str:
    return " ".join(raw.decode("utf-8", "replace").split())[:80]


# --------------------------------------------------------------------------- judges from config (configs/judge/)
# Each returns judge(prompts, responses, rows) -> scores, rows being the held-out rows (the rule
# judge reads their constraints); stage=winrate compares two models' responses with it.

def rule_judge(task: Task | None):
    """configs/judge/rule.yaml: the data's task (data.task) judges each held-out row."""
    if task is None:
        raise UserError("judge=rule scores with the data preset's task and this one has none (data.task is null); "
                        "use judge=reward_model or judge=endpoint")
    return lambda prompts, responses, rows: rule_scores(task, responses, rows)


def reward_model_judge(path: str, fmt: str = "chat", max_length: int = 1024, batch_size: int = 32,
                       dtype: str = "float32"):
    """configs/judge/reward_model.yaml: a local reward model dir (e.g. stage=rm's model/) or hub id."""
    model, tokenizer = reward_models.load_scorer(path, fmt, dtype)
    return lambda prompts, responses, rows: reward_model_scores(model, tokenizer, prompts, responses, fmt, max_length,
                                                                batch_size)


def endpoint_judge(base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                   max_retries: int = 3, concurrency: int = 8, rate_limit_retries: int = 20,
                   max_retry_after: float = 60.0, cache: str | None = None):
    """configs/judge/endpoint.yaml: an OpenAI-compatible endpoint answering "reward:<float>", its
    scores cached under `cache` (null: no cache)."""
    return lambda prompts, responses, rows: endpoint_scores(
        prompts, responses, base_url, model, api_key_env, timeout, max_retries, concurrency,
        rate_limit_retries=rate_limit_retries, max_retry_after=max_retry_after, cache=cache)
