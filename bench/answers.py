"""What the answers benchmarks share: the query mix an auditor sends to `/v1/answers`, and
timing it over HTTP (against a real server process) and in-process (the query service alone).

Shapes: `q` (words only, newest first over the whole tenant), `at_window` (a moment and a
window), `q_at_window` (both), `user` (one user's answers, newest first). Each cycles through
four languages: the words (English, Thai, Japanese, Chinese, each matching about a sixth of
all answers) and the moment (ISO in the language's time zone, or plain language such as
"3 วันที่แล้ว 14:30").
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta

import httpx

from .common import summary
from .data import pseudonymiser

SHAPES = ("q", "at_window", "q_at_window", "user")
LANGUAGES = {
    # words, time zone, plain-language moment ({n} days ago at {hh}:{mm})
    "en": ("refund policy", "UTC", "{n} days ago {hh}:{mm}"),
    "th": ("นโยบายการคืนเงิน", "Asia/Bangkok", "{n} วันที่แล้ว {hh}:{mm}"),
    "ja": ("返品ポリシー", "Asia/Tokyo", "{n}日前 {hh}:{mm}"),
    "zh": ("退款政策", "Asia/Shanghai", "{n}天前 {hh}:{mm}"),
}
WINDOWS = ("15m", "1h", "2h")


def query_mix(per_shape: int, *, end: datetime, days: float, users: int, seed: int = 7) -> list[tuple[str, dict]]:
    """`per_shape` queries of each shape, shuffled: [(shape, query parameters)]."""
    rng = random.Random(seed)
    pseudonymise = pseudonymiser()
    languages = list(LANGUAGES)
    queries = []
    for shape in SHAPES:
        for i in range(per_shape):
            language = languages[i % len(languages)]
            words, tz, plain = LANGUAGES[language]
            params: dict[str, str] = {}
            if shape.startswith("q"):
                params["q"] = words
            if "at" in shape:
                if i % 2:  # plain language, read in the language's zone
                    n = rng.randrange(1, max(2, int(days)))
                    params["at"] = plain.format(n=n, hh=f"{rng.randrange(24):02d}", mm=f"{rng.randrange(60):02d}")
                else:
                    moment = end - timedelta(seconds=rng.uniform(3600, days * 86400 - 3600))
                    params["at"] = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")
                    tz = "UTC"
                params["tz"] = tz
                params["window"] = WINDOWS[rng.randrange(len(WINDOWS))]
            if shape == "user":
                params["user"] = pseudonymise(f"user{rng.randrange(users)}@example.com")
            queries.append((shape, params))
    rng.shuffle(queries)
    return queries


def shape_summary(samples: dict[str, list[float]], counts: dict[str, list[int]] | None = None) -> dict:
    out = {}
    for shape, values in samples.items():
        out[shape] = {k: round(v, 2) if isinstance(v, float) else v for k, v in summary(values).items()}
        if counts and counts.get(shape):
            out[shape]["median_matches"] = sorted(counts[shape])[len(counts[shape]) // 2]
    everything = [v for values in samples.values() for v in values]
    out["all"] = {k: round(v, 2) if isinstance(v, float) else v for k, v in summary(everything).items()}
    return out


def time_http(base: str, key: str, queries: list[tuple[str, dict]], *, warmup: int = 20) -> dict:
    """Each query once over one keep-alive connection, in order; plus, interleaved, the
    baselines: `/healthz` (no auth, no store) and `/v1/whoami` (auth, no query, not logged)."""
    samples: dict[str, list[float]] = {shape: [] for shape in SHAPES}
    counts: dict[str, list[int]] = {shape: [] for shape in SHAPES}
    baselines: dict[str, list[float]] = {"healthz": [], "whoami": []}
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        for shape, params in queries[:warmup]:  # first use of each language's date parser, caches
            client.get("/v1/answers", params=params).raise_for_status()
        for n, (shape, params) in enumerate(queries):
            started = time.perf_counter()
            response = client.get("/v1/answers", params=params)
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"/v1/answers {params} answered {response.status_code}: {response.text[:500]}")
            samples[shape].append(elapsed)
            counts[shape].append(response.json()["count"])
            if n % 2 == 0:
                for path in baselines:
                    started = time.perf_counter()
                    client.get("/" + path if path == "healthz" else "/v1/" + path).raise_for_status()
                    baselines[path].append(time.perf_counter() - started)
    result = shape_summary(samples, counts)
    result["baseline_healthz"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in summary(baselines["healthz"]).items()}
    result["baseline_whoami"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in summary(baselines["whoami"]).items()}
    return result


def time_service(service, principal, queries: list[tuple[str, dict]], *, warmup: int = 20) -> dict:
    """The same queries through `QueryService.answers` in this process: store + service,
    without HTTP, authentication or the access log."""
    samples: dict[str, list[float]] = {shape: [] for shape in SHAPES}
    for shape, params in queries[:warmup]:
        service.answers(principal, **params)
    for shape, params in queries:
        started = time.perf_counter()
        service.answers(principal, **params)
        samples[shape].append(time.perf_counter() - started)
    return shape_summary(samples)


def verdict(http: dict, target_ms: float) -> dict:
    p99 = http["all"]["p99_ms"]
    slow = [s for s in SHAPES if http[s]["p99_ms"] > target_ms]
    return {"target_p99_ms": target_ms, "p99_ms": p99, "meets_target": p99 <= target_ms and not slow,
            "shapes_over_target": slow,
            "p99_over_healthz": round(p99 / max(http["baseline_healthz"]["p99_ms"], 1e-6), 1)}
