"""Opens N idle SSE streams to a running hub and reports its RSS before and
after, from /proc: a first look at memory per connection, until the
benchmark harness (herald-bench) replaces it.

Usage: python3 bench/idle_rss.py N PORT HUB_PID
"""
import asyncio, sys, os
N = int(sys.argv[1]); port = int(sys.argv[2]); pid = int(sys.argv[3])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
async def one(i, ready):
    src = f"127.0.0.{1 + i // 20000}"
    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
    w.write(f"GET /v1/events?topic=t/{i % 100} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    data = b""
    while b"herald.connected" not in data:
        data += await r.read(4096)
    ready.append(1)
    return r, w
async def main():
    before = rss(); ready = []
    conns = []
    for start in range(0, N, 500):
        conns += await asyncio.gather(*[one(i, ready) for i in range(start, min(N, start + 500))])
    await asyncio.sleep(1)
    after = rss()
    print(f"connections={len(ready)} rss_before_kib={before} rss_after_kib={after} kib_per_conn={(after-before)/len(ready):.2f}")
asyncio.run(main())
