"""Writers racing on one store, as real processes: several runs promoting at the same instant,
and the conditional write both the champion and the ingest lock rest on."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from pneumo_core import DEFAULT_DATASET
from pneumo_core.data.synthetic import generate
from pneumo_core.errors import StorageError
from pneumo_core.layout import ingest_lock_key, manifest_key
from pneumo_core.runs import champion
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.open import open_store

REPO = Path(__file__).resolve().parents[2]
SCORES = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)  # one racing process each; 0.9 must win
ROUNDS = 15
# In odd rounds the racers leave the barrier in order of score, the worst first, a few
# milliseconds apart (less than one promotion takes, so their steps still overlap): a worse
# run then promotes first and every better one must find and replace it.
WORSE_FIRST_STEP_S = 0.004


def _race(base: str, score: float, barrier: Barrier, results: Queue) -> None:
    """One racing process: every round it promotes its run at the instant the others do.

    Imports are done and every round's store opened and connected before the first round; the
    barrier then releases all racers of a round together, so their read-decide-write steps
    overlap (a plain read-then-write would let a worse run end champion most rounds)."""
    try:
        stores = [open_store(f"{base}/round-{r}") for r in range(ROUNDS)]
        for store in stores:
            store.exists(champion.CHAMPION_KEY)
        for r, store in enumerate(stores):
            barrier.wait(timeout=120)
            if r % 2:
                time.sleep(SCORES.index(score) * WORSE_FIRST_STEP_S)
            new = champion.candidate(f"run-{score}-{r}", score, "h", "m", "l", "p")
            d = champion.promote_if_better(store, new)
            results.put((r, score, d.promoted, d.previous.oof_map if d.previous else None))
    except BaseException as exc:
        barrier.abort()
        results.put(("failed", score, repr(exc), None))
        raise


@pytest.fixture(params=["file", "s3"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return (tmp_path / "store").as_uri()
    return request.getfixturevalue("s3_env")


def test_the_best_of_simultaneous_runs_always_ends_champion(base: str) -> None:
    """7 runs with distinct scores finish at the same instant over a 0.5 champion, in each of
    15 rounds, as real processes (in every other round the worse ones a moment earlier): the
    best ends champion every round and each decision is true (promoted only over a worse
    champion, kept only under a better one)."""
    stores: list[ObjectStore] = [open_store(f"{base}/round-{r}") for r in range(ROUNDS)]
    for store in stores:
        champion.promote_if_better(store, champion.candidate("old", 0.5, "h", "m", "l", "p"))
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters, as separate runs are
    barrier, results = spawn.Barrier(len(SCORES)), spawn.Queue()
    racers = [spawn.Process(target=_race, args=(base, s, barrier, results)) for s in SCORES]
    for racer in racers:
        racer.start()
    try:
        outcomes = [results.get(timeout=300) for _ in range(ROUNDS * len(SCORES))]
    finally:
        for racer in racers:
            racer.join(timeout=60)
            if racer.is_alive():
                racer.kill()
    failed = [o for o in outcomes if o[0] == "failed"]
    assert not failed, f"racing processes failed: {failed}"
    assert all(racer.exitcode == 0 for racer in racers)
    best = max(SCORES)
    lost = [r for r, s in enumerate(stores) if champion.read_champion(s).oof_map != best]
    assert not lost, f"a worse run ended champion in rounds {lost} of {ROUNDS}"
    for r, score, promoted, previous in outcomes:
        if promoted:
            assert previous < score, f"round {r}: {score} promoted over {previous}"
        else:
            assert previous > score, f"round {r}: {score} kept under {previous}"
    assert all(o[2] for o in outcomes if o[1] == best)  # it beats whichever champion it found
    worse_first = [o for o in outcomes if o[0] % 2 and o[1] < best and o[2]]
    assert worse_first, "no worse run promoted first in the worse-first rounds"


def test_conditional_writes_lose_no_update_between_racing_processes(base: str) -> None:
    """The primitive itself: 3 processes each add 1 to a shared counter 40 times with
    read-then-conditional-write (retrying when another writer got there first); a lost update
    would leave the counter short. Creation races too: each starts by creating it."""
    script = textwrap.dedent(
        """
        import sys, time
        from pneumo_core.storage.open import open_store
        store, start = open_store(sys.argv[1]), float(sys.argv[2])
        store.exists("counter")
        while time.time() < start:
            pass
        created = store.put_bytes_if("counter", b"0", None)
        conflicts = 0
        for _ in range(40):
            while True:
                data, version = store.read_versioned("counter")
                if store.put_bytes_if("counter", str(int(data) + 1).encode(), version):
                    break
                conflicts += 1
        print(int(created), conflicts, flush=True)
        """
    )
    start = time.time() + 3.0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, f"{base}/cas", str(start)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(3)
    ]  # fmt: skip
    created, conflicts = 0, 0
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-2000:]
        made, lost = map(int, out.split())
        created, conflicts = created + made, conflicts + lost
    assert created == 1, f"{created} processes created the same object"
    assert open_store(f"{base}/cas").read_versioned("counter")[0] == b"120"
    print(f"{conflicts} conditional writes refused and retried")


INGESTER = textwrap.dedent(
    """
    import sys, time
    from pneumo_core.data import ingest
    from pneumo_core.storage.open import open_store
    source, base, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
    store = open_store(base)
    while time.time() < start:
        pass
    print(ingest.ingest(source, store, progress=False).digest, flush=True)
    """
)


def test_two_ingests_at_once_leave_a_manifest_that_describes_the_store(
    base: str, tmp_path: Path
) -> None:
    """Two different sources ingested into one store at the same instant: one waits for the
    other's lock, and the manifest names exactly the bytes that are stored."""
    sources = [
        generate(tmp_path / f"source-{seed}", n_train=40, n_test=10, image_size=256,
                           seed=seed)
        for seed in (1, 2)
    ]  # fmt: skip
    start = time.time() + 3.0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", INGESTER, str(source), base, str(start)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for source in sources
    ]  # fmt: skip
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    store = open_store(base)
    manifest = store.get_json(manifest_key(DEFAULT_DATASET))
    assert manifest["source"] in {str(s.resolve()) for s in sources}
    wrong = [m["key"] for m in manifest["members"] if store.sha256(m["key"]) != m["sha256"]]
    assert not wrong, f"{len(wrong)} stored objects differ from the manifest, e.g. {wrong[0]}"
    assert not store.exists(ingest_lock_key(DEFAULT_DATASET))


TTL_S = 15


def test_a_lock_whose_holder_was_killed_is_taken_over_after_its_lease(
    base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder SIGKILLed inside the lease blocks others only until the lease runs out.
    The lease (15 s) is long enough that the first check always falls inside it, even on a
    loaded machine (5 s was not: the lease ran out before the check once)."""
    from pneumo_core.storage.lease import lease

    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            """
            import sys, time
            from pneumo_core.storage.lease import lease
            from pneumo_core.storage.open import open_store
            with lease(open_store(sys.argv[1]), "locks/x.json", "a test holder"):
                print("held", flush=True)
                time.sleep(600)
            """
        ), base],
        env={**os.environ, "PYTHONPATH": str(REPO), "PNEUMO_LOCK_TTL_S": str(TTL_S)},
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    holder.kill()
    holder.wait()
    store = open_store(base)
    monkeypatch.setenv("PNEUMO_LOCK_WAIT_S", "0")
    with (
        pytest.raises(StorageError, match=r"a test holder by .* holds the lock"),
        lease(store, "locks/x.json", "a second writer"),
    ):
        pass
    monkeypatch.setenv("PNEUMO_LOCK_WAIT_S", "30")
    started = time.monotonic()
    with lease(store, "locks/x.json", "a second writer") as held:
        assert json.loads(store.read_versioned("locks/x.json")[0])["owner"] == held.owner
    assert time.monotonic() - started < TTL_S + 10  # the lease ran out; no waiting for more
    assert not store.exists("locks/x.json")
