#!/usr/bin/env python3
# 64 concurrent clients against `glassbox serve` (SmolLM2): statuses, latency, server peak memory.
import json, subprocess, sys, threading, time, urllib.request, urllib.error
exe, n, queue = sys.argv[1], int(sys.argv[2]), sys.argv[3]
p = subprocess.Popen([exe, "serve", "--port", "0", "--max-queue", queue], stdout=subprocess.PIPE, text=True)
url = p.stdout.readline().split("http://")[1].split()[0].rstrip("/")
body = json.dumps({"prompt": "When Mary and John went to the store, John gave a drink to", "correct": " Mary", "incorrect": " John"}).encode()
def post():
    t = time.time()
    try:
        r = urllib.request.urlopen(urllib.request.Request(f"http://{url}/api/analyze", body, {"Content-Type": "application/json"}), timeout=600)
        return r.status, time.time() - t
    except urllib.error.HTTPError as e:
        return e.code, time.time() - t
post()
res = [None] * n
def run(i): res[i] = post()
t0 = time.time()
ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
[t.start() for t in ts]; [t.join() for t in ts]
wall = time.time() - t0
ok = sorted(s for c, s in res if c == 200); busy = sum(1 for c, _ in res if c == 503)
hwm = [l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmHWM")][0].split()[1]
print(f"{n} clients, --max-queue {queue}: {len(ok)} served, {busy} answered 503, other {n-len(ok)-busy}; {wall:.1f} s; served latency p50 {ok[len(ok)//2]:.2f} s p99 {ok[int((len(ok)-1)*0.99)]:.2f} s; server peak {int(hwm)/1024:.0f} MiB")
p.kill()
