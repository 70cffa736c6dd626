"""Load test of `tunelab serve` on loopback: the real server (a subprocess, started with the CLI) and
an asyncio client sending N requests at concurrency C, with dynamic batching on and off.

    /work/cpu python bench/serve_load.py [--run RUN] [--requests 2000] [--concurrency 32] [--gen-run RUN]

Classification: one real tweet per request to a sentiment run. Generation (optional, --gen-run): short
greedy chat completions to a chat run. Writes bench/results/<cpu kind>/serve_load.json and serve_load.md.
Latency is per request, from send to full response, measured by the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx  # the HTTP client the pinned `openai` package ships with
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(targets: list[str], extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "serve", *targets, "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server failed to start:\n{proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start in 300 s")


async def load(url: str, path: str, bodies: list[dict], concurrency: int) -> dict:
    latencies, errors = [], 0
    queue = iter(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def worker():
            nonlocal errors
            for body in queue:  # each worker pulls the next request: `concurrency` in flight at all times
                t0 = time.perf_counter()
                try:
                    r = await client.post(path, json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"requests": len(bodies), "concurrency": concurrency, "errors": errors, "seconds": round(wall, 2),
            "throughput_rps": round(len(bodies) / wall, 1), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def batch_stats(url: str, kind: str) -> dict:
    text = httpx.get(f"{url}/metrics").text
    values = {}
    for suffix in ("count", "sum"):
        line = next((ln for ln in text.splitlines() if ln.startswith(f'tunelab_batch_size_{suffix}{{kind="{kind}"}}')), None)
        values[suffix] = float(line.split()[-1]) if line else 0.0
    return {"model_calls": int(values["count"]), "mean_batch": round(values["sum"] / max(values["count"], 1), 2)}


def scenario(name: str, target: str, path: str, bodies: list[dict], warmup: list[dict], concurrency: int,
             batching: list[str]) -> dict:
    proc, url = start_server([target], batching)
    try:
        asyncio.run(load(url, path, warmup, concurrency))
        kind = "classify" if path.endswith("classify") else "generate"
        before = batch_stats(url, kind)
        result = asyncio.run(load(url, path, bodies, concurrency))
        after = batch_stats(url, kind)
        calls = after["model_calls"] - before["model_calls"]
        result["model_calls"] = calls
        result["mean_batch"] = round(len(bodies) / max(calls, 1), 2)
        result.update(scenario=name, server_flags=" ".join(batching) or "(defaults)")
        print(json.dumps(result), flush=True)
        return result
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", default="/work/main/runs/sentiment-lora-20261123-194401")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--gen-run", default=None, help="chat run for a generation load (optional)")
    p.add_argument("--gen-requests", type=int, default=96)
    p.add_argument("--gen-tokens", type=int, default=16)
    args = p.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    from tunelab.data.catalog import DATASETS

    tweets = DATASETS["tweets-sentiment"].load()["text"].sample(args.requests + args.concurrency, random_state=0).tolist()
    name = Path(args.run).name
    bodies = [{"model": name, "texts": [t]} for t in tweets]
    warmup, bodies = bodies[: args.concurrency], bodies[args.concurrency:]
    results = []
    for label, flags in (("classify, dynamic batching", ["--batch-window-ms", "5", "--max-batch", "32"]),
                         ("classify, no batching", ["--no-batching"])):
        results.append(scenario(label, args.run, "/v1/classify", bodies, warmup, args.concurrency, flags))
    if args.gen_run:
        gname = Path(args.gen_run).name
        prompts = [f"Tell me something about {w}." for w in ("cats", "rain", "music", "tea", "trains", "books", "the sea", "bread")]
        gen = [{"model": gname, "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
                "max_tokens": args.gen_tokens, "temperature": 0} for i in range(args.gen_requests)]
        for label, flags in (("chat, dynamic batching", ["--batch-window-ms", "20", "--max-batch", "16"]),
                             ("chat, no batching", ["--no-batching"])):
            results.append(scenario(label, args.gen_run, "/v1/chat/completions", gen, gen[:4], args.concurrency, flags))
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "run": args.run, "gen_run": args.gen_run,
           "gen_tokens": args.gen_tokens if args.gen_run else None, "results": results}
    from bench.common import results_dir

    out_dir = results_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "serve_load.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# tunelab serve load test", "",
             f"Loopback, {out['machine']}, server and client on the same machine. Classification: `{args.run}`, "
             f"one real tweet per request. " + (f"Chat: `{args.gen_run}`, greedy, max_tokens {args.gen_tokens}." if args.gen_run else ""),
             "", "| scenario | requests | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors | model calls | mean batch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['scenario']} | {r['requests']} | {r['concurrency']} | {r['throughput_rps']} | {r['p50_ms']} | "
                     f"{r['p95_ms']} | {r['p99_ms']} | {r['errors']} | {r['model_calls']} | {r['mean_batch']} |")
    (out_dir / "serve_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
