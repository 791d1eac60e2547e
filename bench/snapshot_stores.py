"""Snapshot stores benchmark: `python bench/snapshot_stores.py [--json]`.

Remote services cannot be reached here, so each store runs against what its tests use: a
real moto S3 server and the local Hub and Kaggle servers of tests/snapshot/fakes, all on
loopback. The figures measure what tether's store layer adds, not the services:

- s3_put_ratio    S3Store.put_file of 4 x 16 MiB / boto3's own upload_file with the same
                  transfer config (the anchor: what a user would script). Goal <= 1.25.
- s3_get_ratio    S3Store.get of the same objects / boto3 get_object().read(). Goal <= 1.25.
- hf_commits      commits for a push-shaped write (300 small objects, 40 x 1 MiB packs,
                  flush, then the snapshot object, flush) with the default batch bounds.
                  Goal <= 3: two batches and the snapshot commit, not one per object.
- tail_read_bytes response bytes the server sent for get_range(key, -16, 16) of a 32 MiB
                  object, worst of hf:// and kaggle:// (a pack trailer read). Goal <= 16: the
                  read is an HTTP range, never the whole pack.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # the local servers live with the tests

MiB = 1024 * 1024


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_s3(tmp: Path, rounds: int) -> tuple[float, float]:
    from boto3.s3.transfer import TransferConfig

    from tests.snapshot.fakes.moto_s3 import serve_moto_s3
    from tether.snapshot.stores import s3

    files = []
    for i in range(4):
        path = tmp / f"pack{i}"
        path.write_bytes(os.urandom(16 * MiB))
        files.append(path)
    with serve_moto_s3() as moto:
        client = moto.client()
        client.create_bucket(Bucket="bench")
        store = s3.open("s3://bench/store", endpoint=moto.endpoint, region="us-east-1")
        config = TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=16 * MiB,
                                max_concurrency=4)
        put_ratio, get_ratio = [], []
        for r in range(rounds):   # interleaved, so machine noise hits both sides
            ours = timed(lambda r=r: [store.put_file(f"packs/aa/{r}-{i}", f)
                                  for i, f in enumerate(files)])
            raw = timed(lambda r=r: [client.upload_file(str(f), "bench", f"raw/{r}-{i}", Config=config)
                                 for i, f in enumerate(files)])
            put_ratio.append(ours / raw)
            ours = timed(lambda r=r: [store.get(f"packs/aa/{r}-{i}") for i in range(len(files))])
            raw = timed(lambda r=r: [client.get_object(Bucket="bench", Key=f"raw/{r}-{i}")["Body"].read()
                                 for i in range(len(files))])
            get_ratio.append(ours / raw)
        store.close()
    return statistics.median(put_ratio), statistics.median(get_ratio)


def bench_hf_commits() -> int:
    from tests.snapshot.fakes.hf_hub_fake import serve_fake_hub
    from tether.snapshot.stores import hf

    with serve_fake_hub() as hub:
        store = hf.open("hf://datasets/alice/bench", endpoint=hub.url)
        for i in range(300):
            store.put(f"index/{i:04d}", b"i" * 200)
        for i in range(40):
            store.put(f"packs/{i:02x}/p{i}", os.urandom(MiB))
        store.flush()
        store.put("snapshots/s1", b"snapshot")
        store.flush()
        store.close()
        return len(hub.commits("alice/bench")) - 1   # minus the repo's initial commit


def bench_tail_reads() -> int:
    from tests.snapshot.fakes.hf_hub_fake import serve_fake_hub
    from tests.snapshot.fakes.kaggle_api_fake import serve_fake_kaggle
    from tether.snapshot.stores import hf, kaggle

    data = os.urandom(32 * MiB)
    worst = 0
    with serve_fake_hub() as hub, serve_fake_kaggle(ready_after=0) as kg:
        for store, server in ((hf.open("hf://datasets/alice/tail", endpoint=hub.url), hub),
                              (kaggle.open("kaggle://alice/tail-bench", endpoint=kg.url), kg)):
            store.put("packs/aa/big", data)
            store.flush()
            store.close()
            fresh = (hf.open("hf://datasets/alice/tail", endpoint=hub.url) if server is hub
                     else kaggle.open("kaggle://alice/tail-bench", endpoint=kg.url))
            fresh.exists("packs/aa/big")
            before = server.bytes_sent
            assert fresh.get_range("packs/aa/big", -16, 16) == data[-16:]
            worst = max(worst, server.bytes_sent - before)
            fresh.close()
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("-n", type=int, default=3, help="rounds of the S3 comparison")
    args = parser.parse_args()
    env = {"HF_TOKEN": "hf_test_token", "HF_HUB_DISABLE_TELEMETRY": "1",
           "KAGGLE_USERNAME": "alice", "KAGGLE_KEY": "alice-key",
           "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "TETHER_SECRETS_BACKEND": "file"}
    with tempfile.TemporaryDirectory(prefix="tether-bench-stores-") as tmp:
        os.environ.update(env, TETHER_HOME=str(Path(tmp) / "home"),
                          HF_HOME=str(Path(tmp) / "hf"), KAGGLE_CONFIG_DIR=str(Path(tmp) / "kg"))
        put_ratio, get_ratio = bench_s3(Path(tmp), args.n)
        commits = bench_hf_commits()
        tail = bench_tail_reads()
    rows = [
        ("s3_put_ratio", round(put_ratio, 2), "<= 1.25", put_ratio <= 1.25),
        ("s3_get_ratio", round(get_ratio, 2), "<= 1.25", get_ratio <= 1.25),
        ("hf_commits", commits, "<= 3", commits <= 3),
        ("tail_read_bytes", tail, "<= 16", tail <= 16),
    ]
    if args.json:
        print(json.dumps({name: {"value": value, "goal": goal, "pass": ok}
                          for name, value, goal, ok in rows}, indent=1))
    else:
        print(f"{'figure':<16} {'value':>8}  {'goal':<8} result")
        for name, value, goal, ok in rows:
            print(f"{name:<16} {value!s:>8}  {goal:<8} {'pass' if ok else 'FAIL'}")
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
