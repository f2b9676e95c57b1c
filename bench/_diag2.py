import time, statistics, os
from bench.harness import stack
from PIL import Image
import numpy as np
with stack() as s:
    os.environ.update(s.env)
    from jobs.settings import Settings
    from jobs.storage import S3Storage
    from worker.encode import encode_image
    st = S3Storage(Settings.from_env())
    img = Image.fromarray((np.random.rand(64,64,3)*255).astype("uint8"))
    enc, put = [], []
    for i in range(60):
        t=time.perf_counter(); b=encode_image(img,"png"); enc.append(time.perf_counter()-t)
        t=time.perf_counter(); st.put(f"x/{i}.png", b, "png", {"job-id":"x"}); put.append(time.perf_counter()-t)
    slow = []
    for i in range(40):
        time.sleep(0.1)
        t=time.perf_counter(); st.put(f"y/{i}.png", b, "png", {"job-id":"x"}); slow.append(time.perf_counter()-t)
    busy = []
    for i in range(30):
        x = sum(range(2_000_000))
        t=time.perf_counter(); st.put(f"z/{i}.png", b, "png", {"job-id":"x"}); busy.append(time.perf_counter()-t)
    print("put after 100ms idle p50 ms", statistics.median(slow[5:])*1000, "after cpu work", statistics.median(busy[5:])*1000)
    print("encode p50 ms", statistics.median(enc[10:])*1000, "put p50 ms", statistics.median(put[10:])*1000)
