import time, statistics, os
from bench.harness import stack
with stack() as s:
    os.environ.update(s.env)
    import redis
    from jobs.settings import Settings
    from jobs.storage import S3Storage
    from jobs.store import JobStore
    from jobs.workers import WorkerInfo
    from jobs.capabilities import read_model
    from worker.runner import Runner, Finisher, InFlight, RunnerConfig
    from worker.pipelines import load_backend
    st = Settings.from_env(torch_threads=1)
    r = redis.Redis.from_url(st.redis_url)
    store = JobStore(r); storage = S3Storage(st); inf = InFlight()
    fin = Finisher(store, storage, inf)
    marks = {}
    orig_finish = fin.finish
    import cProfile
    prof = cProfile.Profile()
    def finish(item):
        marks["fin_start"] = time.perf_counter()
        orig_finish(item)
        marks["fin_end"] = time.perf_counter()
    fin.finish = finish
    import functools
    def timed(name, fn):
        @functools.wraps(fn)
        def w(*a, **k):
            t = time.perf_counter(); out = fn(*a, **k); marks.setdefault(name, []).append(time.perf_counter() - t); return out
        return w
    storage.put = timed("put", storage.put)
    store.succeed = timed("succeed", store.succeed)
    import worker.runner as wr
    wr.encode_image = timed("encode", wr.encode_image)
    backend = load_backend("diffusers", read_model(st.models_dir / "tiny-sd"), st)
    info = WorkerInfo("w","h",1,"tiny-sd","d","","ready")
    runner = Runner(store, backend, fin, RunnerConfig("w"), info, inf)
    og = runner._generate
    def gen(*a):
        marks["gen_start"] = time.perf_counter(); out = og(*a); marks["gen_end"] = time.perf_counter(); return out
    runner._generate = gen
    rows = []
    for i in range(40):
        res = store.create(f"j{i}", "tiny-sd", {"prompt": "p", "num_inference_steps": 4, "seed": i, "width": 64, "height": 64, "num_images": 1, "output_format": "png", "guidance_scale": 7.5, "negative_prompt": None})
        t0 = time.perf_counter()
        runner.run(f"j{i}", "tiny-sd")  # inline finish when the broker list is empty
        t_ret = time.perf_counter()
        while store.get(f"j{i}").status.value != "succeeded": time.sleep(0.0005)
        t_done = time.perf_counter()
        rows.append(dict(claim=(marks["gen_start"]-t0)*1000, gen=(marks["gen_end"]-marks["gen_start"])*1000, handoff=(marks["fin_start"]-marks["gen_end"])*1000, finish=(marks["fin_end"]-marks["fin_start"])*1000, ret=(t_ret-marks["gen_end"])*1000, total_minus_gen=(t_done-t0)*1000-(marks["gen_end"]-marks["gen_start"])*1000))
    for k in rows[0]:
        v=[x[k] for x in rows[5:]]; print(f"{k:16s} p50 {statistics.median(v):7.2f}")
    fin.drain()
    for name in ("put", "succeed", "encode"):
        print(name, statistics.median(marks[name][5:]) * 1000)
