import time, statistics, urllib3
from datetime import datetime
from bench.harness import stack, Receiver, post_json, get_json
BODY = {"prompt": "a pig with wings", "num_inference_steps": 4, "width": 64, "height": 64}
def ts(v): return datetime.fromisoformat(v.replace("Z","+00:00")).timestamp()
with stack() as s:
    api = s.start_api(); s.start_webhooks(); s.start_workers(1, DQ_TORCH_THREADS="1")
    rc = Receiver(); http = urllib3.PoolManager(maxsize=4)
    rows = []
    for i in range(40):
        t0w = time.time(); t0 = time.perf_counter()
        job = post_json(http, api + "/v1/jobs", {**BODY, "seed": i, "webhook": rc.url})
        t_post = time.perf_counter() - t0
        arrived = rc.wait_terminal(job["id"])
        final = get_json(http, f"{api}/v1/jobs/{job['id']}")
        c, st, done = ts(final["created_at"]), ts(final["started_at"]), ts(final["completed_at"])
        g = final["metrics"]["generation_seconds"]
        rows.append(dict(post=t_post*1000, to_created=(c - t0w)*1000, queue=(st-c)*1000, finish=(done-st-g)*1000,
                         deliver=(arrived - t0 - (done - t0w))*1000, total=(arrived-t0-g)*1000))
    for k in rows[0]:
        v = [r[k] for r in rows[5:]]
        print(f"{k:12s} p50 {statistics.median(v):7.2f} ms")
    rc.close()
