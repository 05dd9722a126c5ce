#!/usr/bin/env python3
"""Continuous batching end to end: N streaming clients through `foreshore serve`.

Usage: bench/edge_parallel_bench.py PORT [N ...]
  For each N: N clients stream a completion of --tokens tokens at once;
  prints aggregate tokens/s, TTFT p50/p99 (time to the first content delta,
  client side). Then the TTFT of a short request on an idle edge against
  the same request while 7 long generations run.
Only the standard library; the server must serve an embedded tier "edge".
"""
import http.client
import json
import statistics
import sys
import threading
import time

PORT = int(sys.argv[1])
COUNTS = [int(a) for a in sys.argv[2:]] or [1, 2, 4, 8]
TOKENS = 64


def stream(prompt, max_tokens, out):
    body = json.dumps({"messages": [{"role": "user", "content": prompt}],
                       "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=600)
    start = time.monotonic()
    conn.request("POST", "/v1/chat/completions", body,
                 {"Content-Type": "application/json", "x-foreshore-tier": "edge"})
    resp = conn.getresponse()
    first = None
    tokens = 0
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        for choice in event.get("choices", []):
            if choice.get("delta", {}).get("content") and first is None:
                first = time.monotonic() - start
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
    out.append({"ttft": first or 0.0, "tokens": tokens, "total": time.monotonic() - start})
    conn.close()


def run(clients, max_tokens, prompt="Once upon a time"):
    out = []
    threads = [threading.Thread(target=stream, args=(f"{prompt} {i}", max_tokens, out))
               for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, time.monotonic() - start


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


run(1, 8)  # warm-up
print("| clients | aggregate t/s | per-stream t/s | TTFT p50 ms | TTFT p99 ms |")
print("| ---: | ---: | ---: | ---: | ---: |")
for n in COUNTS:
    out, wall = run(n, TOKENS)
    total = sum(o["tokens"] for o in out)
    ttfts = [o["ttft"] * 1000 for o in out]
    per_stream = statistics.mean(o["tokens"] / max(o["total"] - o["ttft"], 1e-9) for o in out)
    print(f"| {n} | {total / wall:.1f} | {per_stream:.1f} | {pct(ttfts, 50):.0f} | "
          f"{pct(ttfts, 99):.0f} |", flush=True)

idle = []
for _ in range(3):
    out, _ = run(1, 4, "Hi")
    idle.append(out[0]["ttft"] * 1000)
long_out = []
long_threads = [threading.Thread(target=stream, args=(f"Tell a long story {i}", 256, long_out))
                for i in range(7)]
for t in long_threads:
    t.start()
time.sleep(1.0)  # the seven are generating
busy = []
for _ in range(3):
    out, _ = run(1, 4, "Hi")
    busy.append(out[0]["ttft"] * 1000)
for t in long_threads:
    t.join()
print(f"short request TTFT: idle {statistics.median(idle):.0f} ms, beside 7 long generations "
      f"{statistics.median(busy):.0f} ms ({statistics.median(busy) / statistics.median(idle):.2f}x)")
