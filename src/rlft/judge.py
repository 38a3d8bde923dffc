"""Judges: one float score per (prompt, response), so two models can be compared by win rate.

    from rlft import judge, metrics
    url, rm = "http://host:8000/v1", "nvidia/Llama-3.1-Nemotron-70B-Reward"
    ours = judge.endpoint_scores(prompts, our_responses, url, rm)        # prompts: lists of chat messages
    ref = judge.endpoint_scores(prompts, reference_responses, url, rm)
    metrics.win_rate(ours, ref)   # the paper's win rate against Qwen2.5-0.5B-Instruct

Three judges, one per kind of evidence:
  rule_scores          ifcheck's rule judge (offline pipeline; exact, no model)
  reward_model_scores  a local reward model through reward.score (the same contract as training)
  endpoint_scores      a reward model served behind an OpenAI-compatible chat-completions endpoint
                       that answers "reward:<float>", as the paper serves Llama-3.1-Nemotron-70B-Reward

endpoint_scores uses the standard library only (urllib, a thread pool): a judge run is a few
thousand small POSTs, which does not justify a client dependency. The reply is parsed with one
strict regex and never evaluated; an endpoint is untrusted input.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from rlft.errors import UserError

# The whole reply must be "reward:<float>": a prefix match would accept "reward:1; anything".
REWARD = re.compile(r"reward:\s*([-+]?\d+(\.\d+)?([eE][-+]?\d+)?)")
MAX_REPLY_BYTES = 1 << 20  # a reward reply is tens of bytes; cap what a broken endpoint can make us hold


def _same_length(inputs: list, responses: list, what: str, inputs_name: str = "prompts") -> None:
    # reward.score zips without strict=True: a short list would silently drop samples from a win rate.
    if len(inputs) != len(responses):
        raise UserError(f"{what}: {len(inputs)} {inputs_name} but {len(responses)} responses; "
                        "they must pair up one to one")


def rule_scores(responses: list[str], constraints_list: list) -> list[float]:
    """ifcheck's rule judge per sample (fraction of constraints satisfied, 0..1). Constraints may be
    lists of dicts or the JSON strings ifcheck rows store them as."""
    from rlft.tasks import ifcheck

    _same_length(constraints_list, responses, "rule judge", "constraint lists")
    return [ifcheck.judge(r, json.loads(c) if isinstance(c, str) else c) for r, c in zip(responses, constraints_list)]


def reward_model_scores(model, tokenizer, prompts: list[list[dict]], responses: list[str], fmt: str, max_length: int,
                        batch_size: int = 32) -> list[float]:
    """A local reward model's scores through reward.score, so a judge sees inputs encoded exactly as
    the reward model was trained on them (prompts are chat messages [{"role", "content"}])."""
    from rlft.reward import score

    _same_length(prompts, responses, "reward-model judge")
    return score(model, tokenizer, prompts, responses, fmt, max_length, batch_size)


def endpoint_scores(prompts: list[list[dict]], responses: list[str], base_url: str, model: str,
                    api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0, max_retries: int = 3,
                    concurrency: int = 8, backoff: float = 0.5) -> list[float]:
    """Scores from a reward model behind an OpenAI-compatible endpoint, in input order.

    Each sample is one POST {base_url}/chat/completions with the prompt messages plus the response
    as the assistant turn; the reply's choices[0].message.content must be "reward:<float>".
    Connection errors, timeouts, HTTP 429 and 5xx are retried up to `max_retries` times with
    exponential backoff (backoff, 2*backoff, ...): a 70B judge behind a shared server drops requests
    under load. Any other 4xx fails at once, since repeating a rejected request cannot help. At most
    `concurrency` requests are in flight. The API key comes from the environment, never the config,
    so it stays out of config.yaml in the run dir.
    """
    _same_length(prompts, responses, f"judge endpoint {base_url}")
    if not base_url.startswith(("http://", "https://")):
        # urllib would also open file:// and ftp:// URLs; a judge is only ever an HTTP service.
        raise UserError(f"judge endpoint {base_url!r} must start with http:// or https://")
    if concurrency < 1 or max_retries < 0:
        raise UserError(f"judge endpoint {base_url}: concurrency must be >= 1 and max_retries >= 0 "
                        f"(got {concurrency} and {max_retries})")
    if not prompts:
        return []
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    key = os.environ.get(api_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"

    def one(i: int) -> float:
        messages = list(prompts[i]) + [{"role": "assistant", "content": responses[i]}]
        body = json.dumps({"model": model, "messages": messages}).encode()
        content = _content(_post(url, body, headers, timeout, max_retries, backoff, base_url, api_key_env, key),
                           base_url, i)
        m = REWARD.fullmatch(content.strip())
        value = float(m.group(1)) if m else math.nan
        if not math.isfinite(value):  # no match, or an overflow such as 1e999
            raise UserError(f"judge endpoint {base_url} gave no parsable reward for sample {i}: {content[:80]!r}")
        return value

    pool = ThreadPoolExecutor(max_workers=min(concurrency, len(prompts)), thread_name_prefix="rlft-judge")
    try:
        futures = [pool.submit(one, i) for i in range(len(prompts))]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if failed:
            raise failed[0].exception()  # the lowest-index failure among those finished
        return [f.result() for f in futures]
    finally:
        # On failure drop the queued samples rather than spend minutes scoring a run that has already failed.
        pool.shutdown(wait=True, cancel_futures=True)


def _post(url: str, body: bytes, headers: dict, timeout: float, max_retries: int, backoff: float, base_url: str,
          api_key_env: str, key: str | None) -> bytes:
    """The reply body of one POST, retrying what a busy or restarting server may fix."""
    for attempt in range(max_retries + 1):
        last = attempt == max_retries
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers, method="POST"),
                                        timeout=timeout) as reply:
                return reply.read(MAX_REPLY_BYTES)
        except urllib.error.HTTPError as e:  # before URLError: HTTPError is one
            with e:  # closes the connection it holds
                detail = _snippet(e.read())
            if e.code in (401, 403):
                hint = f"set {api_key_env} to a valid API key" if not key else f"check the API key in {api_key_env}"
                raise UserError(f"judge endpoint {base_url} refused the request (HTTP {e.code}): {hint}") from None
            if e.code != 429 and e.code < 500:
                raise UserError(f"judge endpoint {base_url} rejected the request (HTTP {e.code}): {detail!r}") from None
            if last:
                raise UserError(f"judge endpoint {base_url} failed with HTTP {e.code} after {max_retries + 1} "
                                f"attempts: {detail!r}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
            if last:
                reason = getattr(e, "reason", None) or e
                raise UserError(f"judge endpoint {base_url} unreachable: {reason} "
                                f"(after {max_retries + 1} attempts)") from None
        time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


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
# judge reads their constraints); stage=bon compares two models' responses with it.

def rule_judge():
    """configs/judge/rule.yaml: ifcheck's rules on each held-out row's constraints."""
    return lambda prompts, responses, rows: rule_scores(responses, [r["constraints"] for r in rows])


def reward_model_judge(path: str, fmt: str = "chat", max_length: int = 1024, batch_size: int = 32,
                       dtype: str = "float32"):
    """configs/judge/rm.yaml: a local reward model dir (e.g. stage=rm's model/) or hub id."""
    from rlft.reward import load_scorer

    model, tokenizer = load_scorer(path, fmt, dtype)
    return lambda prompts, responses, rows: reward_model_scores(model, tokenizer, prompts, responses, fmt, max_length,
                                                                batch_size)


def endpoint_judge(base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                   max_retries: int = 3, concurrency: int = 8):
    """configs/judge/endpoint.yaml: an OpenAI-compatible endpoint answering "reward:<float>"."""
    return lambda prompts, responses, rows: endpoint_scores(prompts, responses, base_url, model, api_key_env, timeout,
                                                            max_retries, concurrency)
