"""Cost computation at ingest: price table loading, model resolution, exact pricing."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, localcontext
from importlib import resources

import pytest
from aitrail.collector.cost import (
    CostResult,
    PriceEntry,
    PriceTable,
    PriceTableError,
    compute_cost,
    default_price_table,
    normalize_model,
    normalize_provider,
)

AT = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def write_json(path, doc) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def entry(provider, model, inp, out, cached=None, eff="2024-01-01", **extra):
    d = {
        "provider": provider, "model": model, "input_per_1m": inp, "output_per_1m": out,
        "cached_input_per_1m": cached, "currency": "USD", "effective_from": eff,
    }
    d.update(extra)
    return d


# --------------------------------------------------------------------------- shipped table


def test_shipped_table_is_packaged_and_valid(table):
    raw = json.loads(resources.files("aitrail.collector").joinpath("prices.json").read_text())
    assert raw["version"] == "2026-11-01"
    assert raw["currency"] == "USD"
    assert "list prices" in raw["source"]
    assert table.version == "2026-11-01"
    assert len(table.entries) == len(raw["entries"]) > 100
    assert default_price_table() is default_price_table()  # loaded once


@pytest.mark.parametrize(
    "provider, model",
    [
        ("openai", m)
        for m in (
            "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o1", "o1-mini", "o3",
            "o3-mini", "o4-mini", "gpt-4-turbo", "gpt-3.5-turbo", "gpt-5", "gpt-5-mini", "gpt-5-nano",
            "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002",
        )
    ]
    + [
        ("anthropic", m)
        for m in (
            "claude-3-haiku", "claude-3-5-haiku", "claude-3-5-sonnet", "claude-3-7-sonnet", "claude-sonnet-4",
            "claude-opus-4", "claude-opus-4-1", "claude-haiku-4-5", "claude-sonnet-4-5",
        )
    ]
    + [("google", m) for m in ("gemini-1.5-flash", "gemini-1.5-pro", "gemini-2.0-flash", "gemini-2.5-flash", "gemini-2.5-pro")]
    + [("mistral", m) for m in ("mistral-large", "mistral-small", "mistral-medium", "codestral", "open-mistral-nemo")]
    + [("deepseek", "deepseek-chat"), ("deepseek", "deepseek-reasoner"), ("cohere", "command-r-plus")],
)
def test_common_models_are_priced(table, provider, model):
    assert table.resolve(provider, model) == f"{provider}/{model}"
    r = table.compute_cost(provider, model, 1000, 100, at=AT)
    assert r.amount is not None and r.amount > 0, r.reason


# --------------------------------------------------------------------------- name resolution


@pytest.mark.parametrize(
    "provider, model, key",
    [
        ("openai", "gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini"),
        ("openai", "GPT-4o-mini", "openai/gpt-4o-mini"),
        ("openai", "openai/gpt-4o-mini", "openai/gpt-4o-mini"),
        ("openai", "gpt-4o-2024-11-20", "openai/gpt-4o"),
        ("openai", "gpt-4o-2024-05-13", "openai/gpt-4o-2024-05-13"),  # snapshot entry beats family
        ("openai", "o1-mini-2024-09-12", "openai/o1-mini"),
        ("openai", "o1-2024-12-17", "openai/o1"),
        ("openai", "gpt-4.1-nano-2025-04-14", "openai/gpt-4.1-nano"),
        ("openai", "gpt-4.1-mini-2025-04-14", "openai/gpt-4.1-mini"),
        ("openai", "gpt-3.5-turbo-0125", "openai/gpt-3.5-turbo-0125"),
        ("openai", "gpt-4-turbo-preview", "openai/gpt-4-turbo"),
        ("openai", "gpt-5-chat-latest", "openai/gpt-5-chat"),
        ("anthropic", "claude-3-5-sonnet-20241022", "anthropic/claude-3-5-sonnet"),
        ("anthropic", "claude-sonnet-4-5-20250929", "anthropic/claude-sonnet-4-5"),
        ("anthropic", "claude-opus-4-1-20250805", "anthropic/claude-opus-4-1"),
        ("anthropic", "claude-opus-4-20250514", "anthropic/claude-opus-4"),
        ("anthropic", "claude-3-5-sonnet-latest", "anthropic/claude-3-5-sonnet"),
        ("anthropic", "claude-sonnet-4-0", "anthropic/claude-sonnet-4"),  # alias
        ("google", "gemini-2.5-flash-001", "google/gemini-2.5-flash"),
        ("gcp.gemini", "models/gemini-2.5-flash-preview-05-20", "google/gemini-2.5-flash"),
        ("google", "gemini-2.5-flash-lite-preview-06-17", "google/gemini-2.5-flash-lite"),
        ("google", "gemini-1.5-flash-latest", "google/gemini-1.5-flash"),
        ("google", "gemini-1.5-flash-8b-001", "google/gemini-1.5-flash-8b"),
        ("mistral_ai", "mistral-large-2411", "mistral/mistral-large"),
        ("mistralai", "mistral-small-latest", "mistral/mistral-small"),
        ("cohere", "command-r-plus-08-2024", "cohere/command-r-plus"),
        ("aws.bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", "anthropic/claude-3-5-sonnet"),
        ("aws.bedrock", "us.anthropic.claude-3-5-sonnet-20241022-v2:0", "anthropic/claude-3-5-sonnet"),
        ("aws.bedrock", "eu.anthropic.claude-sonnet-4-5-20250929-v1:0", "anthropic/claude-sonnet-4-5"),
        ("aws.bedrock", "anthropic.claude-3-haiku-20240307-v1:0:200k", "anthropic/claude-3-haiku"),
        ("aws.bedrock", "meta.llama3-1-70b-instruct-v1:0", "aws.bedrock/llama3-1-70b-instruct"),
        ("gcp.vertex_ai", "claude-3-5-sonnet-v2@20241022", "anthropic/claude-3-5-sonnet"),
        ("azure.ai.openai", "gpt-4o-mini", "openai/gpt-4o-mini"),
        ("az.ai.openai", "gpt-35-turbo", "openai/gpt-3.5-turbo"),
        ("together_ai", "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo", "together/meta-llama-3.1-70b-instruct-turbo"),
        ("openai", "ft:gpt-4o-mini-2024-07-18:acme:support:AbC123", "openai/ft:gpt-4o-mini-2024-07-18:"),
        # no provider: by name alone when unambiguous, a "provider/" path prefix is a hint
        (None, "gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini"),
        (None, "claude-3-7-sonnet-20250219", "anthropic/claude-3-7-sonnet"),
        (None, "groq/llama-3.3-70b-versatile", "groq/llama-3.3-70b-versatile"),
        (None, "anthropic/claude-3.5-sonnet", "anthropic/claude-3-5-sonnet"),
    ],
)
def test_dated_and_prefixed_names_resolve_to_family(table, provider, model, key):
    assert table.resolve(provider, model) == key


@pytest.mark.parametrize(
    "model, key",
    [
        ("gpt-4o-mini", "openai/gpt-4o-mini"),
        ("gpt-4o", "openai/gpt-4o"),
        ("o1-mini", "openai/o1-mini"),
        ("o1", "openai/o1"),
        ("gpt-4.1-nano", "openai/gpt-4.1-nano"),
        ("gpt-4.1", "openai/gpt-4.1"),
        ("ft:gpt-4.1-nano-2025-04-14:org::x1", "openai/ft:gpt-4.1-nano-2025-04-14:"),
        ("ft:gpt-4.1-2025-04-14:org::x1", "openai/ft:gpt-4.1-2025-04-14:"),
    ],
)
def test_longer_family_is_never_shadowed_by_shorter_one(table, model, key):
    assert table.resolve("openai", model) == key


def test_longest_prefix_wins(tmp_path):
    path = write_json(tmp_path / "p.json", {"entries": [
        entry("acme", "gpt-4o", "1", "1", match="prefix"),
        entry("acme", "gpt-4o-mini", "2", "2", match="prefix"),
        entry("acme", "gpt-4", "3", "3", match="prefix"),
    ]})
    t = PriceTable.load(path)
    assert t.resolve("acme", "gpt-4o-mini-2024-07-18") == "acme/gpt-4o-mini"
    assert t.resolve("acme", "gpt-4o-mini") == "acme/gpt-4o-mini"
    assert t.resolve("acme", "gpt-4o-2024-08-06") == "acme/gpt-4o"
    assert t.resolve("acme", "gpt-4-turbo") == "acme/gpt-4"
    assert t.resolve("acme", "gpt-3.5-turbo") is None
    r = t.compute_cost("acme", "gpt-4o-mini-x", 1_000_000, 0, at=AT)
    assert (r.amount, r.priced_by) == (Decimal(2), "acme/gpt-4o-mini")


@pytest.mark.parametrize(
    "provider, model",
    [
        ("openai", "gpt-4o-audio-preview-2024-10-01"),  # a gpt-4o variant, but not gpt-4o's price
        ("openai", "gpt-4o-realtime-preview"),
        ("google", "gemini-2.0-flash-exp"),
        ("openai", "claude-3-5-sonnet"),  # provider says openai: no cross-vendor guessing
        ("acme", "gpt-4o"),
    ],
)
def test_near_misses_are_not_guessed(table, provider, model):
    assert table.resolve(provider, model) is None
    r = table.compute_cost(provider, model, 10, 10, at=AT)
    assert r.amount is None and r.priced_by is None
    assert r.reason == f"unknown model {model!r} for provider {provider!r}"


def test_normalizers():
    assert normalize_model("models/Gemini-1.5-Flash") == "gemini-1.5-flash"
    assert normalize_model("us.anthropic.claude-3-5-sonnet-20241022-v2:0") == "claude-3-5-sonnet-20241022-v2:0"
    assert normalize_model("arn:aws:bedrock:us-east-1::foundation-model/meta.llama3-1-8b-instruct-v1:0") == (
        "llama3-1-8b-instruct-v1:0"
    )
    assert normalize_model("gpt-4.1") == "gpt-4.1"
    for v in ("azure.ai.openai", "az.ai.openai", "azure_openai"):
        assert normalize_provider(v) == "azure.openai"
    for v in ("gcp.gemini", "gcp.vertex_ai", "google", "vertex_ai", "gemini"):
        assert normalize_provider(v) == "google"
    for v in ("mistral_ai", "mistralai"):
        assert normalize_provider(v) == "mistral"
    assert normalize_provider(" OpenAI ") == "openai"
    assert normalize_provider("aws.bedrock") == "aws.bedrock"
    assert normalize_provider("Acme") == "acme"
    assert normalize_provider("") is None and normalize_provider(None) is None


# --------------------------------------------------------------------------- amounts


def test_gpt_4o_mini_exact_amount(table):
    r = table.compute_cost("openai", "gpt-4o-mini-2024-07-18", 42, 17, at=AT)
    # 42 * 0.15 / 1M + 17 * 0.60 / 1M = 0.0000063 + 0.0000102
    assert r == CostResult(Decimal("0.0000165000"), "USD", "2026-11-01", "openai/gpt-4o-mini", None)
    assert r.amount.as_tuple().exponent == -10
    assert r.amount_str == "0.0000165000"


def test_cached_tokens_priced_at_cached_rate_only(table):
    # gpt-4o-mini: 600 uncached * 0.15 + 400 cached * 0.075 + 100 out * 0.60 = 180 per 1M
    r = table.compute_cost("openai", "gpt-4o-mini", 1000, 100, 400, at=AT)
    assert r.amount == Decimal("0.000180")
    # claude-sonnet-4-5: 2000 * 3 + 8000 * 0.30 + 500 * 15 = 15900 per 1M
    r = table.compute_cost("anthropic", "claude-sonnet-4-5-20250929", 10_000, 500, 8_000, at=AT)
    assert r.amount == Decimal("0.0159")
    # all input cached
    r = table.compute_cost("openai", "gpt-4o-mini", 1000, 0, 1000, at=AT)
    assert r.amount == Decimal("0.000075")


def test_cached_tokens_without_cached_price_charged_at_input_rate(table):
    # gpt-4-turbo has no cached rate: 1000 * 10 + 50 * 30 = 11500 per 1M
    r = table.compute_cost("openai", "gpt-4-turbo", 1000, 50, 500, at=AT)
    assert r.amount == Decimal("0.0115")
    assert r.amount == table.compute_cost("openai", "gpt-4-turbo", 1000, 50, at=AT).amount


def test_quantised_half_even(table):
    # gemini-1.5-flash cached rate 0.01875 / 1M: 1 token = 1.875e-8 -> 10 places, half to even
    r = table.compute_cost("google", "gemini-1.5-flash-002", 1, 0, 1, at=AT)
    assert r.amount == Decimal("0.0000000188")
    assert r.amount_str == "0.0000000188"
    r = table.compute_cost("google", "gemini-1.5-flash-002", 2, 0, 2, at=AT)
    assert r.amount_str == "0.0000000375"


def test_zero_usage_is_zero_and_canonical(table):
    r = table.compute_cost("openai", "gpt-4o", 0, 0, at=AT)
    assert r.amount == 0 and r.amount_str == "0.0000000000"


def test_embeddings_price_input_only(table):
    r = table.compute_cost("openai", "text-embedding-3-small", 1234, None, at=AT)
    assert r.amount == Decimal("0.00002468")
    assert table.compute_cost("openai", "text-embedding-3-small", 1234, 0, at=AT).amount == r.amount


def test_independent_of_thread_decimal_context(table):
    with localcontext() as ctx:
        ctx.prec = 2
        r = table.compute_cost("openai", "gpt-4o-mini", 123_456_789, 98_765_432, at=AT)
    # 123456789 * 0.15 + 98765432 * 0.60 = 18518518.35 + 59259259.2 per 1M
    assert r.amount == Decimal("77.7777775500")


# --------------------------------------------------------------------------- no amount


def test_unknown_model_reason(table):
    r = table.compute_cost("acme", "foo-1", 10, 10, at=AT)
    assert r == CostResult(None, None, "2026-11-01", None, "unknown model 'foo-1' for provider 'acme'")
    r = table.compute_cost(None, "foo-1", 10, 10, at=AT)
    assert r.amount is None and r.reason == "unknown model 'foo-1' (no provider given)"


def test_no_usage_and_invalid_usage(table):
    assert table.compute_cost("openai", "gpt-4o", None, None, at=AT).reason == "no token usage"
    r = table.compute_cost("openai", "gpt-4o", 10, 5, 20, at=AT)
    assert r.amount is None and "cached_input_tokens (20) exceeds input_tokens (10)" in r.reason
    assert table.compute_cost("openai", "gpt-4o", -1, 5, at=AT).reason.startswith("invalid token usage")
    assert table.compute_cost("openai", "gpt-4o", "x", 5, at=AT).reason.startswith("invalid token usage")
    assert table.compute_cost("openai", None, 10, 5, at=AT).reason == "no model name"


def test_ambiguous_without_provider():
    eff = date(2024, 1, 1)
    entries = [
        PriceEntry(p, "llama-x", "exact", Decimal(1), Decimal(1), None, "USD", eff) for p in ("groq", "together")
    ]
    t = PriceTable(entries, version="t")
    r = t.compute_cost(None, "llama-x", 1, 1, at=AT)
    assert r.amount is None
    assert r.reason == "ambiguous model 'llama-x' without provider: priced by groq/llama-x, together/llama-x"
    assert t.compute_cost("groq", "llama-x", 1_000_000, 0, at=AT).amount == Decimal(1)
    assert t.compute_cost(None, "groq/llama-x", 1_000_000, 0, at=AT).priced_by == "groq/llama-x"


# --------------------------------------------------------------------------- effective_from


def test_price_in_force_at_span_time(table):
    # o3: 10/40 from 2025-04-16, 2/8 from 2025-06-10
    before = table.compute_cost("openai", "o3-2025-04-16", 1_000_000, 1_000_000, at=datetime(2025, 6, 9, 23, 59))
    on = table.compute_cost("openai", "o3-2025-04-16", 1_000_000, 1_000_000, at=datetime(2025, 6, 10))
    assert before.amount == Decimal(50) and on.amount == Decimal(10)
    # aware datetimes are compared by their UTC date: 2025-06-09 23:00 -05:00 is 2025-06-10 UTC
    late = datetime(2025, 6, 9, 23, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert table.compute_cost("openai", "o3", 1_000_000, 1_000_000, at=late).amount == Decimal(10)
    # date and int Unix nanoseconds are accepted too
    assert table.compute_cost("openai", "o3", 1_000_000, 1_000_000, at=date(2025, 5, 1)).amount == Decimal(50)
    ns = int(datetime(2025, 7, 1, tzinfo=UTC).timestamp()) * 1_000_000_000
    assert table.compute_cost("openai", "o3", 1_000_000, 1_000_000, at=ns).amount == Decimal(10)


def test_two_entries_before_and_after(tmp_path):
    path = write_json(tmp_path / "p.json", {"entries": [
        entry("acme", "m-1", "2.00", "4.00", eff="2025-03-01"),
        entry("acme", "m-1", "1.00", "2.00", eff="2025-01-01"),  # order in the file does not matter
    ]})
    t = PriceTable.load(path)
    assert t.compute_cost("acme", "m-1", 1_000_000, 0, at=datetime(2025, 2, 28, 23, 59)).amount == Decimal(1)
    assert t.compute_cost("acme", "m-1", 1_000_000, 0, at=datetime(2025, 3, 1)).amount == Decimal(2)
    r = t.compute_cost("acme", "m-1", 1_000_000, 0, at=datetime(2024, 12, 31))
    assert r.amount is None and r.reason == "no price in force on 2024-12-31 for acme/m-1"


def test_no_price_in_force_reason(table):
    r = table.compute_cost("openai", "gpt-5", 10, 10, at=datetime(2023, 1, 1))
    assert r.amount is None and r.priced_by is None
    assert r.reason == "no price in force on 2023-01-01 for openai/gpt-5"


# --------------------------------------------------------------------------- user file


def test_user_file_overrides_and_version(tmp_path, table):
    p = tmp_path / "prices.user.json"
    write_json(p, {"entries": [
        entry("openai", "gpt-4o-mini", "1.00", "2.00", "0.50", eff="2025-01-01"),
        entry("acme", "foo-1", "0.001", "0.002", eff="2020-01-01"),
    ]})
    t = PriceTable.load(p)
    assert t.version == f"2026-11-01+user:{hashlib.sha256(p.read_bytes()).hexdigest()[:8]}"
    r = t.compute_cost("openai", "gpt-4o-mini-2024-07-18", 1000, 1000, 200, at=AT)
    assert (r.amount, r.priced_by, r.price_table_version) == (Decimal("0.0029"), "openai/gpt-4o-mini", t.version)
    # the user's timeline replaces the shipped one (which started 2024-07-18)
    assert t.compute_cost("openai", "gpt-4o-mini", 10, 10, at=datetime(2024, 8, 1)).amount is None
    assert t.compute_cost("acme", "foo-1", 1_000_000, 1_000_000, at=AT).amount == Decimal("0.003")
    # shipped entries not named by the user are untouched
    assert t.compute_cost("openai", "gpt-4o", 1000, 0, at=AT).amount == table.compute_cost(
        "openai", "gpt-4o", 1000, 0, at=AT
    ).amount
    assert table.version == "2026-11-01"  # the shipped table is unaffected


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "invalid JSON"),
        ("[]", "top level must be a JSON object"),
        ('{"entries": {}}', "'entries' must be a list"),
        ('{"entries": [], "entires": []}', "unknown top-level key"),
        (json.dumps({"entries": [entry("openai", "gpt-4o", "abc", "1")]}), "entries[0] (openai/gpt-4o): input_per_1m"),
        (json.dumps({"entries": [entry("openai", "gpt-4o", "-1", "1")]}), "non-negative"),
        (json.dumps({"entries": [entry("openai", "gpt-4o", "1", "1"), entry("x", "y", "1", None)]}),
         "entries[1] (x/y): output_per_1m is required"),
        (json.dumps({"entries": [entry("openai", "gpt-4o", "1", "1", eff="2025-13-01")]}), "effective_from"),
        (json.dumps({"entries": [entry("openai", "gpt-4o", "1", "1", eff="01/02/2025")]}), "effective_from"),
        (json.dumps({"entries": [entry("openai", "gpt-4o", "1", "1", currency="usd")]}), "currency"),
        (json.dumps({"entries": [entry("openai", "gpt-4o", "1", "1", input_per_1M=3)]}), "unknown key"),
        (json.dumps({"entries": [entry("openai", "gpt-4o", "1", "1"), entry("openai", "gpt-4o", "2", "2")]}),
         "duplicate entry for openai/gpt-4o effective 2024-01-01"),
        (json.dumps({"entries": [entry("openai", "gpt-4o", "1", "1", match="fuzzy")]}), "'match'"),
        (json.dumps({"entries": [entry("openai", "meta-llama/llama-3", "1", "1")]}), "bare model name"),
        (json.dumps({"entries": [{"model": "gpt-4o"}]}), "entries[0]: 'provider' must be a non-empty string"),
        ('{"entries": [{"provider": "a", "model": "b", "input_per_1m": NaN}]}', "invalid JSON"),
    ],
)
def test_malformed_user_file_names_file_and_entry(tmp_path, content, fragment):
    p = tmp_path / "bad-prices.json"
    p.write_text(content)
    with pytest.raises(PriceTableError) as exc_info:
        PriceTable.load(p)
    msg = str(exc_info.value)
    assert isinstance(exc_info.value, ValueError)
    assert str(p) in msg
    assert fragment in msg


def test_missing_user_file(tmp_path):
    p = tmp_path / "nope.json"
    with pytest.raises(PriceTableError, match="nope.json"):
        PriceTable.load(p)


# --------------------------------------------------------------------------- misc


def test_module_level_compute_cost_uses_shipped_table():
    r = compute_cost("openai", "gpt-4o-mini", 42, 17, at=AT)
    assert r.amount == Decimal("0.0000165") and r.price_table_version == "2026-11-01"


def test_resolution_cache_is_bounded():
    t = PriceTable(
        [PriceEntry("acme", "m", "exact", Decimal(1), Decimal(1), None, "USD", date(2020, 1, 1))],
        version="t", cache_size=8,
    )
    for i in range(100):
        t.compute_cost("acme", f"junk-{i}", 1, 1, at=AT)
        assert len(t._cache) <= 8
    assert t.compute_cost("acme", "m", 1_000_000, 0, at=AT).amount == Decimal(1)
