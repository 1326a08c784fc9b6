"""Load test of the web demo: N gradio_client users send M translations to apps/demo.py on loopback; latency and memory.

    python benchmarks/demo_load.py --clients 8 --requests 200 --size 128 [--malformed-every 10] [--ckpt PATH] [--out load.json]

The app runs in a subprocess (`python apps/demo.py --host 127.0.0.1 --port P --device cpu`), so its memory can be
sampled apart from the clients': the resident set (VmRSS) of the server and its children every ~0.1 s. Without
--ckpt an untrained generator is saved in a temporary folder and offered: `travel fit`'s architecture at
--channels wide, or a tiny one. Each client thread has its own gradio_client.Client (its own session) and sends
its share of the M requests one after another, each a distinct SIZE x SIZE PNG translated at "a size of my
choice" = SIZE; an answer counts only when it is a SIZE x SIZE image and the status names the file that was sent.
Everything stops at --timeout; nothing leaves 127.0.0.1.

With --malformed-every K, every K-th request uploads a damaged file instead (a truncated PNG, random bytes, an empty
file, a text file named .jpg, in turn). Such a request counts as answered only when the app refuses it with one line
that names the file (Gradio's AppError, what the page shows); an image, a traceback or a silence count as failures.

Memory over the run: the requests are split into quarters by the time they were answered, and the largest RSS
seen in each quarter is reported. Growth = last quarter's peak - first quarter's peak (the first quarter is the
warm-up: first loads, allocator pools, Gradio's per-session state); a leak of L bytes per request shows as about
0.75 * M * L. Exit status 1 when a request was lost or failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

DEMO_APP = Path(__file__).resolve().parents[1] / "apps" / "demo.py"
HOST = "127.0.0.1"  # loopback only: the load never leaves this machine
SAMPLE_EVERY_S = 0.1  # RSS sampling period
STARTUP_LIMIT_S = 240.0  # the app imports torch and Gradio and loads its model before it answers
SETTLE_S = 1.0  # after the last answer, before the "end" RSS is read: lets the server finish its bookkeeping


# ---------------------------------------------------------------------------------------------
# Inputs: a checkpoint and the pictures the clients send.


def save_untrained_checkpoint(path: Path, *, size: int, channels: int | None = None) -> Path:
    """An untrained generator: `travel fit`'s architecture at `channels` wide, or a tiny one (8-16 channels) for None.

    Untrained weights cost what trained ones do, so the latency is that of a real model of this shape.
    """
    import torch

    from travel.checkpoint import save_weights
    from travel.config import GeneratorConfig
    from travel.options import fit_config
    from travel.nets.generator import Generator

    torch.manual_seed(0)
    if channels is None:
        config = GeneratorConfig(base_channels=8, max_channels=16, depth=2, attention_levels=(2,), norm_groups=4, warp=False)
    else:
        config = fit_config(size=size, channels=channels).model.generator
    save_weights(path, Generator(config), source_domain="any", target_domain="any", image_size=size, summary={})
    return path


def picture(size: int, *, seed: int) -> Image.Image:
    """A smooth, colourful SIZE x SIZE picture, different for every seed (compresses like a photo, not like noise)."""
    y, x = np.mgrid[0:size, 0:size]
    phase = seed * 0.7
    channels = [127 + 120 * np.sin(x / (5 + k) + y / (7 - k) + phase + k) for k in range(3)]
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8), mode="RGB")


MALFORMED_KINDS = ("truncated.png", "random.png", "empty.png", "text.jpg")


def malformed_file(path: Path, *, size: int, seed: int) -> Path:
    """A damaged upload of kind MALFORMED_KINDS[seed % 4], written at `path` with that kind's suffix."""
    kind = MALFORMED_KINDS[seed % len(MALFORMED_KINDS)]
    path = path.with_name(f"{path.stem}-{kind}")
    if kind == "truncated.png":
        picture(size, seed=seed).save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "random.png":
        path.write_bytes(np.random.default_rng(seed).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    elif kind == "empty.png":
        path.write_bytes(b"")
    else:
        path.write_text("this is not a picture\n")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The server process and its memory.


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (0 once it has exited)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                stack += [int(child) for child in task.read_text().split()]
            except OSError:
                pass
    return total


class MemorySampler(threading.Thread):
    """(time.perf_counter(), RSS bytes) of a process tree every `every` seconds until stopped."""

    def __init__(self, pid: int, *, every: float = SAMPLE_EVERY_S) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.perf_counter(), tree_rss(self.pid)))
            self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        if self.ident is not None:  # started
            self.join(timeout=5)

    def now(self) -> int:
        return tree_rss(self.pid)


class DemoServer:
    """apps/demo.py (or `app`, a script taking the same options) served on 127.0.0.1 in a subprocess of its own."""

    def __init__(
        self, *, checkpoint: Path, port: int, workdir: Path, app: Path = DEMO_APP, concurrency: int | None = None,
        threads: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}/"
        self.workdir = workdir
        self.log_path = workdir / "server.log"
        self.tmp = workdir / "server-tmp"  # the app's uploads, results and downloads land here, and go with it
        self.tmp.mkdir()
        command = [sys.executable, str(app), "--ckpt", str(checkpoint), "--host", HOST, "--port", str(self.port), "--device", "cpu"]
        if concurrency is not None:
            command += ["--concurrency", str(concurrency)]
        env = dict(os.environ, TMPDIR=str(self.tmp), GRADIO_TEMP_DIR=str(self.tmp), GRADIO_ANALYTICS_ENABLED="False")
        env["TRAVEL_RUNS"] = str(workdir / "no-runs")  # only the checkpoint given is offered, not the user's runs/
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in the server
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_ready(self, *, limit_s: float) -> None:
        import httpx

        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the demo exited with status {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}config", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the demo did not answer on {self.url} within {limit_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.tmp.rglob("*") if p.is_file())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self._log.close()


# ---------------------------------------------------------------------------------------------
# The clients.


@dataclass
class Outcome:
    client: int
    index: int
    sent_s: float  # time.perf_counter()
    done_s: float
    ok: bool
    error: str = ""
    malformed: bool = False  # a damaged upload: ok means it was refused with one line naming the file

    @property
    def latency_s(self) -> float:
        return self.done_s - self.sent_s


@dataclass
class ClientPlan:
    client: int
    files: list[Path]
    outcomes: list[Outcome] = field(default_factory=list)
    malformed: set[int] = field(default_factory=set)  # indices into files of the damaged uploads
    setup_error: str = ""


def _checkpoint_key(client: Any) -> str:
    """The checkpoint the page opens with: the dropdown's value in the app's config."""
    for component in client.config.get("components", []):
        props = component.get("props", {})
        if props.get("elem_id") == "checkpoint" and props.get("value"):
            return str(props["value"])
    raise RuntimeError("the demo offers no checkpoint")


def _one_request(client: Any, path: Path, *, key: str, size: int, timeout: float) -> None:
    """Send one translation and check the answer is this request's SIZE x SIZE image; raises on anything else."""
    from gradio_client import handle_file

    job = client.submit(handle_file(str(path)), key, "custom", size, None, api_name="/translate")
    try:
        (before_path, after_path), download, status = job.result(timeout=timeout)
    except concurrent.futures.TimeoutError:  # not the builtin TimeoutError before Python 3.11
        job.cancel()
        raise concurrent.futures.TimeoutError("no answer before the run's --timeout") from None
    try:
        with Image.open(after_path) as after:
            after.load()
            if after.size != (size, size):
                raise ValueError(f"answer is {after.size[0]} x {after.size[1]}, expected {size} x {size}")
        if path.name not in status or not Path(download).name.startswith(path.stem + "."):
            raise ValueError(f"answer for another request: status {status!r}, download {Path(download).name!r}")
    finally:
        for returned in (before_path, after_path, download):  # the client's copies; keeps its disk use flat
            shutil.rmtree(Path(returned).parent, ignore_errors=True)


def _one_malformed_request(client: Any, path: Path, *, key: str, size: int, timeout: float) -> str:
    """Send a damaged upload; returns the app's refusal, or raises when it answered anything but one line naming it."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    job = client.submit(handle_file(str(path)), key, "custom", size, None, api_name="/translate")
    try:
        job.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        job.cancel()
        raise concurrent.futures.TimeoutError("no answer before the run's --timeout") from None
    except AppError as exc:
        message = str(exc).strip()
        if "\n" in message or path.name not in message or "Traceback" in message:
            raise ValueError(f"refused, but not in one line naming the file: {message[:200]!r}") from None
        return message
    raise ValueError("a damaged upload was answered with an image")


def _client_thread(plan: ClientPlan, *, url: str, size: int, downloads: Path, start: threading.Barrier, deadline: float) -> None:
    from gradio_client import Client

    try:
        client = Client(url, verbose=False, download_files=str(downloads), analytics_enabled=False)
        key = _checkpoint_key(client)
    except Exception as exc:  # noqa: BLE001 -- reported as this client's failure, the others carry on
        plan.setup_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        client = None
    try:
        start.wait(timeout=max(1.0, deadline - time.monotonic()))
    except threading.BrokenBarrierError:
        return
    if client is None:
        return
    for index, path in enumerate(plan.files):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return  # not sent: counted as lost by the report
        sent = time.perf_counter()
        malformed = index in plan.malformed
        try:
            refusal = ""
            if malformed:
                refusal = _one_malformed_request(client, path, key=key, size=size, timeout=remaining)
            else:
                _one_request(client, path, key=key, size=size, timeout=remaining)
            plan.outcomes.append(Outcome(plan.client, index, sent, time.perf_counter(), True, refusal, malformed))
        except Exception as exc:  # noqa: BLE001 -- every failure is counted and its reason kept
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            plan.outcomes.append(Outcome(plan.client, index, sent, time.perf_counter(), False, message, malformed))
    getattr(client, "close", lambda: None)()  # gradio_client releases its threads (older versions lack close)


# ---------------------------------------------------------------------------------------------
# The run.


def run_load(
    *, clients: int, requests: int, size: int, checkpoint: Path | None = None, channels: int | None = None, port: int = 0,
    timeout_s: float = 900.0, malformed_every: int = 0,
    concurrency: int | None = None, server_threads: int | None = None, app: Path = DEMO_APP,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Serve the demo, send `requests` translations from `clients` parallel users, and report what came back."""
    if clients < 1 or requests < clients:
        raise ValueError(f"need clients >= 1 and requests >= clients, got {clients} clients, {requests} requests")
    if malformed_every < 0:
        raise ValueError(f"malformed_every must be >= 0, got {malformed_every}")
    if not 16 <= size <= 2048:
        raise ValueError(f"size must be in 16..2048 (the demo's custom-size range), got {size}")
    deadline = time.monotonic() + timeout_s
    label = (
        str(checkpoint) if checkpoint is not None
        else f"untrained default generator, {channels} channels" if channels else "untrained tiny generator (8-16 channels)"
    )
    with tempfile.TemporaryDirectory(prefix="travel-demo-load-") as scratch:
        workdir = Path(scratch)
        if checkpoint is None:
            checkpoint = save_untrained_checkpoint(workdir / "untrained.safetensors", size=size, channels=channels)
        plans = [ClientPlan(c, []) for c in range(clients)]
        for k in range(requests):  # round robin: client c sends requests c, c + N, ...
            plan = plans[k % clients]
            path = workdir / "inputs" / f"c{plan.client:02d}-r{len(plan.files):04d}.png"
            path.parent.mkdir(exist_ok=True)
            if malformed_every and k % malformed_every == malformed_every - 1:
                path = malformed_file(path, size=size, seed=k // malformed_every)
                plan.malformed.add(len(plan.files))
            else:
                picture(size, seed=k).save(path)
            plan.files.append(path)

        server = DemoServer(
            checkpoint=Path(checkpoint), port=port, workdir=workdir, app=app, concurrency=concurrency, threads=server_threads
        )
        sampler = MemorySampler(server.process.pid)
        try:
            progress(f"starting the demo on {server.url}")
            server.wait_ready(limit_s=min(STARTUP_LIMIT_S, max(1.0, deadline - time.monotonic())))
            sampler.start()
            rss_start = sampler.now()
            share = f"{requests // clients}" + (f"-{requests // clients + 1}" if requests % clients else "")
            progress(f"ready; {clients} clients x {share} requests of {size} px")
            started: list[float] = []  # when every client is connected and the load begins
            barrier = threading.Barrier(clients + 1, action=lambda: started.append(time.perf_counter()))
            threads = [
                threading.Thread(
                    target=_client_thread, args=(plan,), daemon=True,
                    kwargs=dict(url=server.url, size=size, downloads=workdir / "downloads" / str(plan.client),
                                start=barrier, deadline=deadline),
                )
                for plan in plans
            ]
            for thread in threads:
                thread.start()
            try:
                barrier.wait(timeout=max(1.0, deadline - time.monotonic()))
            except threading.BrokenBarrierError:
                raise TimeoutError("the clients did not all connect before --timeout") from None
            for thread in threads:
                thread.join(timeout=max(0.0, deadline - time.monotonic()) + 30)
            wall = time.perf_counter() - started[0]
            time.sleep(SETTLE_S)
            rss_end = sampler.now()
            sampler.stop()
            disk = server.disk_bytes()
            server_exit = server.process.poll()  # None: still serving after the load
            if server_exit is not None:
                progress(f"the demo exited during the load (status {server_exit}):\n{server.log_tail()}")
        finally:
            sampler.stop()
            server.stop()
    return _report(
        plans, clients=clients, requests=requests, size=size, wall=wall, malformed_every=malformed_every, samples=sampler.samples, load_started=started[0],
        rss_start=rss_start, rss_end=rss_end, disk=disk, checkpoint=label, server_exit=server_exit,
    )


def _report(
    plans: Sequence[ClientPlan], *, clients: int, requests: int, size: int, wall: float, malformed_every: int, samples: list[tuple[float, int]],
    load_started: float, rss_start: int, rss_end: int, disk: int, checkpoint: str, server_exit: int | None,
) -> dict[str, Any]:
    outcomes = sorted((o for plan in plans for o in plan.outcomes), key=lambda o: o.done_s)
    answered = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    latencies = np.array([o.latency_s for o in answered if not o.malformed])
    malformed = [o for o in outcomes if o.malformed]
    refusals: dict[str, int] = {}
    for o in malformed:
        if o.ok:  # the refusal's wording with the file name taken out: one entry per kind of damage
            words = o.error.replace(plans[o.client].files[o.index].name, "FILE")
            refusals[words] = refusals.get(words, 0) + 1
    mb = 1 / 2**20

    quarters = [rss * mb for rss in _peaks(outcomes, samples, load_started=load_started, parts=4)]
    tenths = [rss * mb for rss in _peaks(outcomes, samples, load_started=load_started, parts=10)]
    halves = [max(quarters[:2], default=0.0), max(quarters[2:], default=0.0)]
    errors: dict[str, int] = {}
    for o in failed:
        errors[o.error] = errors.get(o.error, 0) + 1
    return {
        "clients": clients,
        "requests": requests,
        "size": size,
        "checkpoint": checkpoint,
        "server_exit_status": server_exit,  # None: the app was still serving after the load
        "sent": len(outcomes),
        "answered": len(answered),
        "failed": len(failed),
        "lost": requests - len(answered),  # failed, never sent (timeout) or from a client that could not connect
        "malformed_every": malformed_every,
        "malformed_sent": len(malformed),
        "malformed_refused_in_one_line": sum(o.ok for o in malformed),
        "refusals": refusals,
        "client_setup_errors": [plan.setup_error for plan in plans if plan.setup_error],
        "errors": dict(sorted(errors.items(), key=lambda item: -item[1])[:5]),
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(answered) / wall, 3) if wall > 0 else None,
        "latency_s": {  # of the answered requests, from submit to the downloaded answer
            "p50": round(float(np.percentile(latencies, 50)), 3),
            "p95": round(float(np.percentile(latencies, 95)), 3),
            "max": round(float(np.max(latencies)), 3),
            "mean": round(float(np.mean(latencies)), 3),
        } if len(latencies) else None,
        "server_rss_mb": {
            "start": round(rss_start * mb, 1),  # ready, before any client connected
            "after_warmup": round(quarters[0], 1) if quarters else None,  # peak during the first quarter
            "peak": round(max([rss for _, rss in samples] + [rss_start, rss_end]) * mb, 1),
            "end": round(rss_end * mb, 1),  # SETTLE_S after the last answer
            "quarters": [round(q, 1) for q in quarters],  # peak in each quarter of the answers
            "tenths": [round(q, 1) for q in tenths],  # the same in tenths: does it level off?
            "growth_second_half": round(halves[1] - halves[0], 1),
            "growth_last_quarter": round(quarters[3] - quarters[0], 1) if len(quarters) == 4 else None,
        },
        "rss_samples": len(samples),
        "server_disk_mb": round(disk * mb, 2),  # uploads and results the app keeps on disk (deleted after an hour)
    }


def _peaks(outcomes: Sequence[Outcome], samples: list[tuple[float, int]], *, load_started: float, parts: int) -> list[int]:
    """Largest RSS in each of `parts` stretches of the load; stretch k ends when (k + 1) / parts of the requests are done."""
    if not outcomes:
        return []
    ends = [outcomes[max(0, -(-len(outcomes) * (k + 1) // parts) - 1)].done_s for k in range(parts)]
    load = [(t, rss) for t, rss in samples if t >= load_started]
    peaks, begin = [], load_started
    for end in ends:  # a stretch shorter than the sampling period takes the last sample before its end
        inside = [rss for t, rss in load if begin <= t <= end] or [rss for t, rss in load if t <= end][-1:] or [0]
        peaks.append(max(inside))
        begin = end
    return peaks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4, help="Parallel users, each with its own gradio_client session.")
    parser.add_argument("--requests", type=int, default=40, help="Translations in all, shared out among the clients.")
    parser.add_argument("--size", type=int, default=64, help="Side of the square images sent, and of the translation.")
    parser.add_argument("--ckpt", type=Path, default=None, help="Checkpoint to serve (default: an untrained one).")
    parser.add_argument(
        "--channels", type=int, default=None,
        help="Without --ckpt: serve travel fit's architecture at this width, untrained (default: a tiny generator).",
    )
    parser.add_argument("--port", type=int, default=0, help="Port on 127.0.0.1 (0: a free one).")
    parser.add_argument("--concurrency", type=int, default=None, help="The app's --concurrency (default: the app's).")
    parser.add_argument("--server-threads", type=int, default=None, help="OMP_NUM_THREADS for the app (default: torch's).")
    parser.add_argument("--malformed-every", type=int, default=0, help="Every K-th request uploads a damaged file (0: none).")
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds for the whole run; unsent requests are lost.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the report here as JSON.")
    args = parser.parse_args(argv)
    if args.ckpt is not None and not args.ckpt.exists():
        parser.error(f"--ckpt {args.ckpt}: no such file or folder")
    if args.ckpt is not None and args.channels is not None:
        parser.error("--channels builds an untrained checkpoint; it cannot be combined with --ckpt")
    if args.channels is not None and args.channels < 4:
        parser.error(f"--channels must be >= 4, got {args.channels}")
    try:
        report = run_load(
            clients=args.clients, requests=args.requests, size=args.size, checkpoint=args.ckpt, channels=args.channels,
            port=args.port, malformed_every=args.malformed_every,
            timeout_s=args.timeout, concurrency=args.concurrency, server_threads=args.server_threads,
            progress=lambda message: print(message, file=sys.stderr, flush=True),
        )
    except ValueError as exc:
        parser.error(str(exc))
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    if args.out is not None:
        from travel.checkpoint import atomic_write_text

        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    return 0 if report["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
