"""One local HTTP server for a rehearsal: the Hugging Face Hub API for the repos built by
hub.build_hub, and an OpenAI-compatible judge that answers like Llama-3.1-Nemotron-70B-Reward.

    with serve("hub-root") as url:        # http://127.0.0.1:<port>
        os.environ["HF_ENDPOINT"] = url   # (before huggingface_hub/datasets are imported)

Hub requests answered (what huggingface_hub 2.4 / transformers 5.24 / datasets 5.2 send):
  HEAD|GET /{repo}/resolve/{rev}/{path}            model files (Range supported)
  HEAD|GET /datasets/{repo}/resolve/{rev}/{path}   dataset files (datasets first asks for README.md)
  GET  /api/{models|datasets}/{repo}[/revision/{rev}]   repo info: sha, siblings
  GET  /api/{models|datasets}/{repo}/tree/{rev}[/{path}][?recursive=true]   HfFileSystem listings
  POST /api/{models|datasets}/{repo}/paths-info/{rev}    HfFileSystem.info
`rev` is "main" or the repo's commit sha (from its manifest). A missing repo, revision or file
answers 404 with the hub's X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound), which
the clients turn into the errors they expect (e.g. transformers skips an absent optional file).

Judge: POST /v1/chat/completions {"model", "messages": [user, assistant]} ->
{"choices": [{"message": {"role": "assistant", "content": "reward:<float>"}}]}, the float a hash
of the user and assistant text (deterministic, in [-25, 0) like Nemotron's scale). Faults, by the
judge request's arrival number n (1-based, per server): n == 3 answers HTTP 500 (once); every
n % 7 == 0 answers HTTP 429 with Retry-After: 0.1. A client that retries gets through.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from rlft.rehearsal.hub import repo_dir

LFS_MIN_SIZE = 10 * 1024 * 1024  # files the hub stores in LFS/Xet: weights, parquet (here: by size or suffix)
LFS_SUFFIXES = (".safetensors", ".parquet", ".bin")
JUDGE_500_AT, JUDGE_429_EVERY, RETRY_AFTER = 3, 7, "0.1"


def judge_reward(user: str, assistant: str) -> float:
    """The judge's deterministic score for one (user, assistant) pair."""
    h = int.from_bytes(hashlib.sha256(f"{user}\0{assistant}".encode()).digest()[:8], "big")
    return round(-25.0 + 25.0 * h / 2**64, 4)


class Hub:
    """The manifests under root, read once; and the judge's request counter."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.repos = {}
        for path in sorted((self.root / "manifests").rglob("*.json")):
            m = json.loads(path.read_text())
            self.repos[(m["repo_type"], m["repo_id"])] = m
        if not self.repos:
            raise FileNotFoundError(f"no built repos under {self.root} (run `python -m rlft.rehearsal build` first)")
        self.judge_requests = 0
        self.log: list[tuple[str, str, int]] = []  # (method, path, status) of every request
        self.lock = threading.Lock()

    def judge_count(self) -> int:
        with self.lock:
            self.judge_requests += 1
            return self.judge_requests


def _entry(m: dict, path: str) -> dict:
    f = m["files"][path]
    e = {"type": "file", "oid": f["oid"], "size": f["size"], "path": path}
    if _is_lfs(path, f["size"]):
        e["lfs"] = {"oid": f["sha256"], "size": f["size"], "pointerSize": 134}
    return e


def _is_lfs(path: str, size: int) -> bool:
    return size >= LFS_MIN_SIZE or path.endswith(LFS_SUFFIXES)


def _dirs(m: dict) -> set[str]:
    return {"/".join(p.split("/")[:i]) for p in m["files"] for i in range(1, p.count("/") + 1)}


def _dir_entry(m: dict, path: str) -> dict:
    return {"type": "directory", "oid": hashlib.sha1(f"{m['sha']}:{path}".encode()).hexdigest(), "size": 0,
            "path": path}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects
    server_version = "rlft-rehearsal-hub"
    hub: Hub  # set on the subclass serve() makes

    def log_message(self, fmt, *args):  # quiet: the log lives in hub.log
        pass

    # ----------------------------------------------------------------- plumbing

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)) if "Content-Length" not in (headers or {})
                         else headers["Content-Length"])
        self._logged(status)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _logged(self, status: int) -> None:
        """Log before the headers go out: a client that has its answer finds the request in hub.log."""
        with self.hub.lock:
            self.hub.log.append((self.command, self.path, status))

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})},
                   head=self.command == "HEAD")

    def _error(self, status: int, code: str | None, message: str) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message} if code else {})

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _repo(self, repo_type: str, parts: list[str], rev: str | None):
        """(manifest, None) or (None, error sent)."""
        m = self.hub.repos.get((repo_type, "/".join(parts)))
        if m is None:
            self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
            return None
        if rev is not None and rev not in ("main", m["sha"]):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return m

    # ----------------------------------------------------------------- routes

    def do_HEAD(self):
        self._route()

    def do_GET(self):
        self._route()

    def do_POST(self):
        self._route()

    def _route(self):
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        query = parse_qs(url.query)
        try:
            if parts[:3] == ["v1", "chat", "completions"] and self.command == "POST":
                return self._judge()
            if parts[:2] == ["v1", "models"]:
                return self._json(200, {"object": "list", "data": [
                    {"id": "nvidia/llama-3.1-nemotron-70b-reward", "object": "model", "owned_by": "rlft-rehearsal"}]})
            if parts[:1] == ["api"] and len(parts) >= 3 and parts[1] in ("models", "datasets"):
                return self._api(parts[1][:-1], parts[2:], query)
            repo_type = "model"
            if parts[:1] == ["datasets"]:
                repo_type, parts = "dataset", parts[1:]
            if "resolve" in parts[1:3]:
                i = parts.index("resolve", 1)
                if len(parts) > i + 2:
                    return self._resolve(repo_type, parts[:i], parts[i + 1], "/".join(parts[i + 2:]))
            self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _resolve(self, repo_type: str, repo: list[str], rev: str, path: str) -> None:
        m = self._repo(repo_type, repo, rev)
        if m is None:
            return
        f = m["files"].get(path)
        if f is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist on \"{rev}\"")
        headers = {"X-Repo-Commit": m["sha"], "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if _is_lfs(path, f["size"]):
            headers |= {"ETag": f'"{f["sha256"]}"', "X-Linked-Etag": f'"{f["sha256"]}"',
                        "X-Linked-Size": str(f["size"])}
        else:
            headers["ETag"] = f'"{f["oid"]}"'
        file = repo_dir(self.hub.root, repo_type, m["repo_id"]) / path
        start, end, status = 0, f["size"] - 1, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].split(",")[0].partition("-")
            if a:
                start, end = int(a), min(int(b), end) if b else end
            else:  # suffix range: the last b bytes
                start = max(0, f["size"] - int(b))
            if start > end:
                return self._send(416, b"", {"Content-Range": f"bytes */{f['size']}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{f['size']}"
        length = end - start + 1
        headers["Content-Length"] = str(length)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self._logged(status)
        self.end_headers()
        if self.command == "GET":
            with file.open("rb") as fh:
                fh.seek(start)
                left = length
                while left > 0:
                    chunk = fh.read(min(1 << 20, left))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)

    def _api(self, repo_type: str, rest: list[str], query: dict) -> None:
        for i, word in enumerate(rest):
            if word in ("revision", "tree", "paths-info") and i in (1, 2):
                repo, action, args = rest[:i], word, rest[i + 1:]
                break
        else:
            repo, action, args = rest, "revision", []
        rev = args[0] if args else None
        m = self._repo(repo_type, repo, rev)
        if m is None:
            return
        if action == "revision":
            org = m["repo_id"].split("/")[0] if "/" in m["repo_id"] else None
            info = {"_id": m["sha"][:24], "id": m["repo_id"], "author": org, "sha": m["sha"], "private": False,
                    "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
                    "lastModified": "2024-09-19T00:00:00.000Z", "createdAt": "2024-09-19T00:00:00.000Z",
                    "siblings": [{"rfilename": p} for p in m["files"]],
                    "usedStorage": sum(f["size"] for f in m["files"].values())}
            if repo_type == "model":
                info["modelId"] = m["repo_id"]
            return self._json(200, info)
        if action == "tree":
            base = "/".join(args[1:]).strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            dirs = _dirs(m)
            if base and base not in dirs:
                return self._error(404, "EntryNotFound", f"{base} does not exist on \"{rev}\"")
            prefix = base + "/" if base else ""
            under = [p for p in sorted(dirs | set(m["files"])) if p.startswith(prefix)]
            if not recursive:
                under = [p for p in under if "/" not in p[len(prefix):]]
            return self._json(200, [_entry(m, p) if p in m["files"] else _dir_entry(m, p) for p in under])
        # paths-info: form-encoded or JSON {"paths": [...], "expand": bool}
        body = self._body()
        ctype = self.headers.get("Content-Type", "")
        paths = (json.loads(body or b"{}").get("paths", []) if "json" in ctype
                 else parse_qs(body.decode()).get("paths", []))
        dirs = _dirs(m)
        out = [_entry(m, p) if p in m["files"] else _dir_entry(m, p)
               for p in (p.strip("/") for p in paths) if p in m["files"] or p in dirs]
        return self._json(200, out)

    def _judge(self) -> None:
        n = self.hub.judge_count()
        body = self._body()
        if n == JUDGE_500_AT:
            return self._json(500, {"error": {"message": "rehearsal: injected server error", "code": 500}})
        if n % JUDGE_429_EVERY == 0:
            return self._json(429, {"error": {"message": "rehearsal: injected rate limit", "code": 429}},
                              {"Retry-After": RETRY_AFTER})
        try:
            req = json.loads(body)
            messages = req["messages"]
            user = next(m["content"] for m in messages if m["role"] == "user")
            assistant = next(m["content"] for m in reversed(messages) if m["role"] == "assistant")
            assert isinstance(user, str) and isinstance(assistant, str)
        except (ValueError, KeyError, TypeError, StopIteration, AssertionError):
            return self._json(400, {"error": {"message": "expected {'model', 'messages': [user, assistant]}",
                                              "code": 400}})
        content = f"reward:{judge_reward(user, assistant)}"
        return self._json(200, {
            "id": f"chatcmpl-rehearsal-{n}", "object": "chat.completion", "created": 0,
            "model": req.get("model", "nvidia/llama-3.1-nemotron-70b-reward"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 1, "total_tokens": 1}})


def make_server(root: str | Path, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    hub = Hub(root)
    handler = type("RehearsalHandler", (Handler,), {"hub": hub})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.hub = hub
    return server


@contextlib.contextmanager
def serve(root: str | Path, host: str = "127.0.0.1", port: int = 0):
    """Serve `root` on a background thread; yields the server (its URL: server.url)."""
    server = make_server(root, host, port)
    server.url = f"http://{host}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="rlft-rehearsal-hub", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
