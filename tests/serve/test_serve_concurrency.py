"""Many simultaneous requests are all answered, in turn, through the one work queue."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from serve_helpers import MODELS, png

from captionlab.serve import ServeConfig, create_app
from captionlab.serve.work import JobStore, QueueFull, WorkQueue


def test_work_queue_runs_items_one_at_a_time_in_order():
    q = WorkQueue(max_pending=100)
    running, most, order = 0, 0, []
    lock = threading.Lock()

    def item(i):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.002)
        order.append(i)
        with lock:
            running -= 1
        return i * i

    futures = [q.submit(item, i) for i in range(40)]
    assert [f.result(timeout=30) for f in futures] == [i * i for i in range(40)]
    assert most == 1 and order == list(range(40))
    assert q.pending == 0 and q.completed == 40
    q.close()


def test_work_queue_hands_exceptions_to_the_caller_and_goes_on():
    q = WorkQueue()

    def boom():
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        q.submit(boom).result(timeout=10)
    assert q.submit(lambda: 7).result(timeout=10) == 7
    q.close()


def test_work_queue_refuses_beyond_its_bound():
    q = WorkQueue(max_pending=2)
    gate = threading.Event()
    first = q.submit(gate.wait, 10)
    second = q.submit(lambda: "queued")
    with pytest.raises(QueueFull, match="--max-queue 2"):
        q.submit(lambda: "too many")
    gate.set()
    assert first.result(timeout=10) and second.result(timeout=10) == "queued"
    assert q.submit(lambda: "room again").result(timeout=10) == "room again"
    q.close()


def test_job_store_forgets_old_finished_jobs():
    store = JobStore(keep=3)
    jobs = [store.new("dream", 10) for _ in range(3)]
    for job in jobs[:2]:
        job.state = "done"
    newest = store.new("dream", 10)
    assert store.get(jobs[0].id) is None and store.get(newest.id) is newest
    assert store.get(jobs[2].id) is jobs[2]  # still running: kept


async def _many(app, n: int) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        image = png(size=(120, 90))

        def request(i):
            kind = ("classify", "caption", "saliency", "explain")[i % 4]
            files = {"image": (f"{i}.png", image, "image/png")}
            data = {"method": "vanilla"} if kind == "explain" else None
            return client.post(f"/api/{kind}", files=files, data=data)

        return await asyncio.gather(*(request(i) for i in range(n)))


def test_many_simultaneous_requests_are_all_answered(registry, tiny_engine):
    app = create_app(ServeConfig(), registry=registry, engine=tiny_engine)
    responses = asyncio.run(_many(app, 48))
    assert [r.status_code for r in responses] == [200] * 48
    assert all(len(r.json()["classes"]) == 5 for r in responses[0::4])
    assert all(len(r.json()["results"]) == len(MODELS) for r in responses[1::4])
    assert all(r.json()["overlay"].startswith("data:image/png") for r in responses[2::4])
    assert all(r.json()["model"] == "attention" for r in responses[3::4])
    assert app.state.work.completed == 48 and app.state.work.pending == 0
    app.state.work.close()


def test_a_full_queue_answers_503_and_recovers(registry, tiny_engine):
    from fastapi.testclient import TestClient

    app = create_app(ServeConfig(max_queue=1), registry=registry, engine=tiny_engine)
    gate = threading.Event()
    with TestClient(app) as client:
        blocker = app.state.work.submit(gate.wait, 10)  # the queue's one place is taken
        files = {"image": ("a.png", png(), "image/png")}
        r = client.post("/api/classify", files=files)
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert "busy" in r.json()["error"]
        r = client.post("/api/dream", data={"target": "goldfish", "iterations": 2})
        assert r.status_code == 503
        gate.set()
        blocker.result(timeout=10)
        assert client.post("/api/classify", files=files).status_code == 200
