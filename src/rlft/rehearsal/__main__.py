"""python -m rlft.rehearsal build|serve|env|run|check: the local hub for rehearsing the paper's recipes.

    python -m rlft.rehearsal build --root .rehearsal                    # once (~2 GB, skips what is built)
    python -m rlft.rehearsal run --root .rehearsal -- make paper-math   # serve, run with the env, stop
    # or by hand:
    python -m rlft.rehearsal serve --root .rehearsal --port-file .rehearsal/port &
    eval "$(python -m rlft.rehearsal env --root .rehearsal --port-file .rehearsal/port)"
    python -m rlft.rehearsal check --root .rehearsal                    # the hub ids load (fresh process)
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from rlft.rehearsal.hub import build_hub
from rlft.rehearsal.server import make_server, serve


def hub_env(root: str | Path, url: str) -> dict[str, str]:
    """The variables a process needs for hub ids to resolve through the rehearsal server. The
    offline switches are set to 0 (not unset) so a Makefile's `?=` defaults cannot turn them on."""
    return {"HF_ENDPOINT": url, "HF_HOME": str(Path(root).resolve() / "hf-home"), "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "RLFT_JUDGE_URL": url + "/v1",
            "HF_HUB_DISABLE_TELEMETRY": "1"}


def _wait_port(port_file: Path, timeout: float = 30.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if port_file.is_file() and port_file.read_text().strip():
            return int(port_file.read_text())
        time.sleep(0.1)
    raise SystemExit(f"no port in {port_file} after {timeout:.0f} s: is `python -m rlft.rehearsal serve` running?")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlft.rehearsal", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the hub's repos under --root (skips repos already built)")
    s = sub.add_parser("serve", help="serve --root's repos and the judge until killed")
    e = sub.add_parser("env", help="print `export` lines for a running server")
    r = sub.add_parser("run", help="serve --root, run COMMAND with the hub env, stop; exits with COMMAND's code")
    c = sub.add_parser("check", help="serve --root and load every repo by hub id in a fresh process (JSON)")
    for q in (b, s, e, r, c):
        q.add_argument("--root", required=True, help="the hub's directory")
    b.add_argument("--qwen-layers", type=int, default=24, help="Qwen2.5-0.5B depth (published: 24)")
    b.add_argument("--reward-layers", type=int, default=2, help="DeBERTa/DistilBERT depth (published: 24/6)")
    b.add_argument("--seed", type=int, default=0)
    for q in (s, r, c):
        q.add_argument("--host", default="127.0.0.1")
        q.add_argument("--port", type=int, default=0, help="0: any free port")
    s.add_argument("--port-file", help="write the chosen port here once listening")
    e.add_argument("--port-file", help="read the port from here (waits for it)")
    e.add_argument("--url", help="the server's URL, instead of --port-file")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    c.add_argument("--no-forward", action="store_true", help="skip the Qwen forward pass")
    args = p.parse_args(argv)

    if args.cmd == "build":
        start = time.time()
        build_hub(args.root, qwen_layers=args.qwen_layers, reward_layers=args.reward_layers, seed=args.seed)
        print(f"hub ready at {Path(args.root).resolve()} ({time.time() - start:.0f} s)")
        return 0

    if args.cmd == "env":
        if not (args.url or args.port_file):
            p.error("env needs --url or --port-file")
        url = args.url or f"http://127.0.0.1:{_wait_port(Path(args.port_file))}"
        for k, v in hub_env(args.root, url).items():
            print(f"export {k}={shlex.quote(v)}")
        return 0

    if args.cmd == "serve":
        server = make_server(args.root, args.host, args.port)
        port = server.server_address[1]
        if args.port_file:
            tmp = Path(args.port_file).with_suffix(".tmp")
            tmp.write_text(f"{port}\n")
            tmp.replace(args.port_file)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        print(f"serving {Path(args.root).resolve()} at http://{args.host}:{port} "
              f"(judge: http://{args.host}:{port}/v1)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            if args.port_file:
                Path(args.port_file).unlink(missing_ok=True)
        return 0

    command = args.command[args.command[:1] == ["--"]:] if args.cmd == "run" else (
        [sys.executable, "-m", "rlft.rehearsal.check"] + (["--no-forward"] if args.no_forward else []))
    if not command:
        p.error("run needs a COMMAND after --")
    with serve(args.root, args.host, args.port) as server:
        env = os.environ | hub_env(args.root, server.url)
        print(f"rehearsal hub at {server.url}: {shlex.join(command)}", file=sys.stderr, flush=True)
        return subprocess.run(command, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
