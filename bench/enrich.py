"""Enrichment speed: local derivations over a million leads, and the provider path
against a real HTTP server on loopback, compared with its configured rate limit.

    python bench/enrich.py --leads 1000000 [--domains 2000] [--rate 200]

Prints one JSON document. Inputs are built outside the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def normalised_leads(count: int, seed: int):
    """Sample leads as capture leaves them (mapped and normalised), in 100k chunks."""
    import multiprocessing

    from app.generate import generate
    from leadflow.capture import sources
    from leadflow.capture.mapping import prepare_records
    from leadflow.capture.rules import SourceMapping
    from leadflow.settings import get_settings

    now = datetime(2026, 11, 1, tzinfo=UTC)
    sample = get_settings().var_dir / "bench" / f"leads-{count}-seed{seed}"
    if not (sample / "leads.csv").exists():
        child = multiprocessing.get_context("spawn").Process(
            target=generate, args=(sample,), kwargs={"leads": count, "seed": seed, "now": now}
        )
        child.start()
        child.join()
    path = str(sample / "leads.csv")
    mapping = SourceMapping().resolve(sources.read_header(path))
    frames = []
    for chunk in sources.read_csv_chunks(path, chunk_size=100_000):
        frame = prepare_records(chunk, mapping, source="bench", now=now)
        frames.append(frame[["email", "title", "phone", "country", "company", "website"]])
    return frames, sample


class Provider(BaseHTTPRequestHandler):
    """Answers every lookup at once with a small company record."""

    calls = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        with Provider.lock:
            Provider.calls += 1
        body = json.dumps({"industry": "Software", "employees": 120, "revenue": 1.5e7}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


def provider_path(domains: int, rate: float) -> dict:
    from blocks.firmographics import HttpFirmographics
    from leadflow.enrich.firmographics import HttpProvider, LookupStats

    server = ThreadingHTTPServer(("127.0.0.1", 0), Provider)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = HttpFirmographics(
        base_url=f"http://127.0.0.1:{server.server_port}",
        rate_limit_per_second=rate,
        concurrency=8,
    )
    provider = HttpProvider(config)
    names = [f"company{i}.example" for i in range(domains)]
    stats = LookupStats()
    started = time.perf_counter()
    answers = provider.lookup(names, stats)
    seconds = time.perf_counter() - started
    server.shutdown()
    return {
        "domains": domains,
        "calls": Provider.calls,
        "found": sum(1 for a in answers.values() if a.status == "found"),
        "seconds": round(seconds, 2),
        "calls_per_s": round(Provider.calls / seconds, 1),
        "rate_limit_per_s": rate,
        "share_of_rate_limit": round(Provider.calls / seconds / rate, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--domains", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args()

    from leadflow.enrich.hop import derive, load_lists

    frames, _ = normalised_leads(args.leads, args.seed)
    lists = load_lists()
    derive(frames[0].iloc[:1000], lists)  # warm the per-process caches of the lists
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    rows = 0
    for frame in frames:
        derive(frame, lists)
        rows += len(frame)
    seconds = time.perf_counter() - started
    result = {
        "bench": "enrich",
        "local": {
            "leads": rows,
            "seconds": round(seconds, 2),
            "leads_per_s": round(rows / seconds),
            "target_leads_per_s": 100_000,
            "batch_size": 100_000,
        },
        "provider": provider_path(args.domains, args.rate),
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_enrich_mb": rss_before,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
