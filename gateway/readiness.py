"""What `/readyz` of the gateway says: each dependency by name, `"ok"` or `"unavailable: <why>"`,
and an overall status.

- `"ready"` (200): every dependency answers.
- `"degraded"` (200): a dependency ingest can do without is away, today the key store: known
  keys are still acknowledged from the cache, unknown ones get 503 + Retry-After. Still 200,
  because taking the gateway out of a load balancer would not help (every replica shares the
  store) and would refuse the spans it can still take.
- `"not ready"` (503): a dependency ingest cannot do without is away (Kafka): nothing can be
  acknowledged, so the balancer should send senders elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Readiness:
    body: dict[str, str]
    status_code: int

    @classmethod
    def of(cls, *, required: dict[str, str | None], degraded: dict[str, str | None]) -> Readiness:
        """Each dependency's problem (None: it answers)."""
        checks = {**required, **degraded}
        body = {name: "ok" if problem is None else f"unavailable: {problem}" for name, problem in checks.items()}
        if any(problem is not None for problem in required.values()):
            return cls({"status": "not ready", **body}, 503)
        if any(problem is not None for problem in degraded.values()):
            return cls({"status": "degraded", **body}, 200)
        return cls({"status": "ready", **body}, 200)
