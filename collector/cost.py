"""LLM cost computation at ingest.

A :class:`PriceTable` is built once (at collector start-up) from the price table shipped with
the package (``prices.json``), optionally merged with a user price file, and is then queried
once per span through :meth:`PriceTable.compute_cost`.

Design rules
------------
* **Never guess.** A model that does not resolve to a price entry gets ``amount=None`` and a
  human-readable ``reason``; it is never priced like a "similar" model.
* **Exact money.** Prices are parsed as :class:`~decimal.Decimal` (JSON numbers are read as
  decimals, never floats) and the cost is computed in integer arithmetic, then returned as a
  ``Decimal`` quantised to :data:`AMOUNT_DECIMAL_PLACES` (10) decimal places, rounding half to
  even. With list prices of at most 4 decimals per 1M tokens the result is exact; the fixed
  exponent makes the value canonical (use :attr:`CostResult.amount_str` for a fixed-point
  string, ``str()`` of a Decimal switches to exponent notation below 1e-6).
* **Cached input.** OpenTelemetry ``gen_ai.usage.input_tokens`` includes cached tokens, so the
  cost is ``(input - cached) * input_rate + cached * cached_rate + output * output_rate``.
  Without a cached rate, all input tokens are charged at the input rate. ``cached > input`` is
  reported as invalid usage (an instrumentation that reports input *excluding* cache reads),
  rather than silently mispriced.
* **Fast.** Model resolution is memoised per ``(provider, model)`` string pair (bounded), so the
  per-span cost is a couple of dict look-ups, a bisect over the entry's price timeline and a
  few integer operations.

Model resolution (per provider, first hit wins)
-----------------------------------------------
1. the normalised name (lower-case; text up to the last ``/`` removed -- ``openai/``,
   ``models/``, ARNs, Hugging Face orgs; Bedrock region and vendor prefixes such as ``us.`` and
   ``anthropic.`` removed) is looked up exactly, among entry models and their ``aliases``;
2. recognised version suffixes are stripped one at a time (``@20241022``, ``:200k``,
   ``-v1:0``, ``-2024-07-18``, ``-20241022``, ``-08-2024``, ``-2411``, ``-001``, ``-latest``,
   ``-preview[-05-20]``) and each shorter name is looked up exactly -- so a snapshot entry
   (``gpt-4o-2024-05-13``) beats its family (``gpt-4o``), and ``gpt-4o-mini-2024-07-18`` can only
   reach ``gpt-4o-mini``, never ``gpt-4o``;
3. ``"match": "prefix"`` entries: the longest prefix of the normalised name wins.

The provider's ``provider_fallbacks`` (e.g. ``azure.openai -> openai``) are then tried in order.
Without a provider the model must match in exactly one provider; a ``provider/`` path prefix
on the model name (LiteLLM style, ``groq/llama-3.3-70b-versatile``) is used as a hint first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Context, Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "AMOUNT_DECIMAL_PLACES",
    "CostResult",
    "PriceEntry",
    "PriceTable",
    "PriceTableError",
    "compute_cost",
    "default_price_table",
    "normalize_model",
    "normalize_provider",
]

#: Number of decimal places of :attr:`CostResult.amount` (rounding: half to even).
AMOUNT_DECIMAL_PLACES = 10

PRICES_RESOURCE = "prices.json"

_CTX = Context(prec=200)  # explicit context: immune to changes of the thread's decimal context
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_NS_PER_DAY = 86_400 * 1_000_000_000
_DEFAULT_CACHE_SIZE = 8192

# ---------------------------------------------------------------------------------------------
# Providers
# ---------------------------------------------------------------------------------------------

_PROVIDER_ALIASES: dict[str, str] = {}
for _canonical, _aliases in {
    "openai": ("openai", "open_ai"),
    "azure.openai": (
        "azure.openai", "azure.ai.openai", "az.ai.openai", "azure_openai", "azure-openai",
        "azureopenai", "azure",
    ),
    "azure.ai.inference": ("azure.ai.inference", "az.ai.inference", "azure_ai", "azure_ai_inference"),
    "anthropic": ("anthropic",),
    "aws.bedrock": ("aws.bedrock", "bedrock", "aws_bedrock", "amazon_bedrock", "amazon-bedrock", "bedrock_converse"),
    "google": (
        "google", "gemini", "gcp.gemini", "gcp.gen_ai", "gcp.vertex_ai", "gcp.vertexai", "vertex_ai",
        "vertexai", "vertex", "vertex_ai_beta", "google_genai", "google.genai", "google_vertexai",
        "google_ai_studio", "google-ai-studio", "google-vertex",
    ),
    "mistral": ("mistral", "mistral_ai", "mistralai", "mistral.ai", "mistral-ai"),
    "cohere": ("cohere", "cohere_ai", "cohere-ai"),
    "deepseek": ("deepseek", "deepseek_ai", "deepseek-ai"),
    "groq": ("groq",),
    "together": ("together", "together_ai", "togetherai", "together.ai", "together-ai"),
    "xai": ("xai", "x_ai", "x.ai", "x-ai"),
    "meta": ("meta", "meta_llama"),
}.items():
    for _alias in _aliases:
        _PROVIDER_ALIASES[_alias] = _canonical


def normalize_provider(value: str | None) -> str | None:
    """Canonical provider name for a ``gen_ai.provider.name`` / ``gen_ai.system`` value.

    Known spellings map to ``openai``, ``azure.openai``, ``azure.ai.inference``, ``anthropic``,
    ``aws.bedrock``, ``google`` (Gemini API and Vertex AI), ``mistral``, ``cohere``,
    ``deepseek``, ``groq``, ``together``, ``xai`` or ``meta``; anything else is returned
    lower-cased and stripped (so price files can name their own providers). Empty -> ``None``.
    """
    if value is None:
        return None
    v = value.strip().lower()
    if not v:
        return None
    return _PROVIDER_ALIASES.get(v, v)


# ---------------------------------------------------------------------------------------------
# Model names
# ---------------------------------------------------------------------------------------------

_BEDROCK_PREFIX = re.compile(
    r"^(?:(?:us|us-gov|eu|apac|jp|au|ca|global)\.)?"
    r"(?:(?:anthropic|meta|mistral|cohere|amazon|ai21|deepseek|openai|qwen|writer)\.)?"
)
# One version-like suffix at the end of a name. re.search picks the leftmost start, so the
# longest applicable suffix (e.g. "-08-2024" rather than "-2024") is removed.
_VERSION_SUFFIX = re.compile(
    r"(?:@[^@]*"  # Vertex AI: @20241022, @001, @latest
    r"|:\d+k"  # Bedrock context-window variant: :200k
    r"|-v\d+(?:[.:]\d+)*"  # -v1:0, -v2, -v0.1
    r"|-\d{4}-\d{2}-\d{2}"  # OpenAI: -2024-07-18
    r"|-\d{8}"  # Anthropic: -20241022
    r"|-\d{2}-\d{4}"  # Cohere: -08-2024
    r"|-\d{3,4}"  # Mistral -2411, OpenAI -0125, Gemini -001
    r"|-latest"
    r"|-preview(?:-\d{2}-\d{2}|-\d{2}-\d{4})?"  # -preview, -preview-05-20, -preview-09-2025
    r")$"
)


def normalize_model(value: str) -> str:
    """Lower-case ``value`` and strip path and Bedrock prefixes (not version suffixes).

    ``"models/gemini-1.5-flash"`` -> ``"gemini-1.5-flash"``,
    ``"us.anthropic.claude-3-5-sonnet-20241022-v2:0"`` -> ``"claude-3-5-sonnet-20241022-v2:0"``.
    """
    s = value.strip().lower()
    if "/" in s:
        s = s.rsplit("/", 1)[1]
    if "." in s:
        s = _BEDROCK_PREFIX.sub("", s, count=1)
    return s


def _model_candidates(normalized: str) -> list[str]:
    """The normalised name followed by its successively suffix-stripped forms."""
    out = [normalized]
    s = normalized
    while True:
        m = _VERSION_SUFFIX.search(s)
        if m is None or m.start() == 0:
            return out
        s = s[: m.start()]
        out.append(s)


# ---------------------------------------------------------------------------------------------
# Data types
# ---------------------------------------------------------------------------------------------


class PriceTableError(ValueError):
    """A price file is unreadable or malformed; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class CostResult:
    """Cost of one LLM call.

    ``amount`` is ``None`` exactly when ``reason`` is set; ``priced_by`` (the matched entry key,
    ``"<provider>/<model>"``) is set exactly when ``amount`` is.
    """

    amount: Decimal | None
    currency: str | None
    price_table_version: str
    priced_by: str | None
    reason: str | None

    @property
    def amount_str(self) -> str | None:
        """``amount`` as a fixed-point string with 10 decimals (``"0.0000165000"``), or None."""
        return None if self.amount is None else format(self.amount, "f")


@dataclass(frozen=True, slots=True)
class PriceEntry:
    """One row of a price table (prices per 1M tokens)."""

    provider: str
    model: str
    match: str  # "exact" | "prefix"
    input_per_1m: Decimal
    output_per_1m: Decimal
    cached_input_per_1m: Decimal | None
    currency: str
    effective_from: date
    aliases: tuple[str, ...] = ()
    source: str | None = None
    note: str | None = None

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.model}"


class _Rate:
    """A price entry compiled to integer arithmetic.

    Rates are integers in units of 10**-scale currency per 1M tokens; ``units`` (sum of
    tokens * rate) therefore has ``scale + 6`` implied decimals and is converted to 10 decimals
    by multiplying by ``mul`` or (scale > 4) dividing by ``div`` with half-even rounding.
    """

    __slots__ = ("cached", "currency", "div", "input", "mul", "output")

    def __init__(self, e: PriceEntry) -> None:
        prices = [e.input_per_1m, e.output_per_1m]
        if e.cached_input_per_1m is not None:
            prices.append(e.cached_input_per_1m)
        scale = max(0, *(-p.as_tuple().exponent for p in prices))
        self.input = int(e.input_per_1m.scaleb(scale, _CTX))
        self.output = int(e.output_per_1m.scaleb(scale, _CTX))
        self.cached = self.input if e.cached_input_per_1m is None else int(e.cached_input_per_1m.scaleb(scale, _CTX))
        shift = AMOUNT_DECIMAL_PLACES - (scale + 6)
        self.mul = 10**shift if shift >= 0 else 0
        self.div = 10**-shift if shift < 0 else 0
        self.currency = e.currency


class _Timeline:
    __slots__ = ("days", "key", "rates")

    def __init__(self, key: str, entries: list[PriceEntry]) -> None:
        entries = sorted(entries, key=lambda x: x.effective_from)
        self.key = key
        self.days = tuple(x.effective_from.toordinal() for x in entries)
        self.rates = tuple(_Rate(x) for x in entries)


# ---------------------------------------------------------------------------------------------
# Parsing and validation
# ---------------------------------------------------------------------------------------------

_TOP_KEYS = frozenset({"version", "currency", "entries", "source", "notes", "provider_fallbacks", "$schema"})
_ENTRY_KEYS = frozenset({
    "provider", "model", "match", "input_per_1m", "output_per_1m", "cached_input_per_1m",
    "currency", "effective_from", "aliases", "source", "note",
})
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid price")


def _price(value: Any, field: str, *, nullable: bool = False) -> Decimal | None:
    if value is None:
        if nullable:
            return None
        raise ValueError(f"{field} is required")
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ValueError(f"{field} must be a number, got {value!r}")  # noqa: TRY004 -> PriceTableError
    try:
        d = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{field} must be a number, got {value!r}") from None
    if not d.is_finite() or d < 0:
        raise ValueError(f"{field} must be a finite non-negative number, got {value!r}")
    return d


@dataclass
class _Document:
    version: str | None
    entries: list[PriceEntry]
    fallbacks: dict[str, tuple[str, ...]]


def _parse_document(raw: bytes, origin: str, *, require_version: bool) -> _Document:
    def fail(msg: str) -> PriceTableError:
        return PriceTableError(f"price table {origin}: {msg}")

    try:
        data = json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text ({exc})") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise fail(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise fail("top level must be a JSON object")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise fail(f"unknown top-level key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")

    version = data.get("version")
    if version is not None and (not isinstance(version, str) or not version.strip()):
        raise fail(f"'version' must be a non-empty string, got {version!r}")
    if require_version and version is None:
        raise fail("'version' is required")
    default_currency = data.get("currency")
    if default_currency is not None and (
        not isinstance(default_currency, str) or not _CURRENCY.match(default_currency)
    ):
        raise fail(f"'currency' must be an ISO 4217 code like 'USD', got {default_currency!r}")

    fallbacks: dict[str, tuple[str, ...]] = {}
    raw_fb = data.get("provider_fallbacks", {})
    if not isinstance(raw_fb, dict):
        raise fail("'provider_fallbacks' must be an object mapping a provider to a list of providers")
    for prov, chain in raw_fb.items():
        if not isinstance(chain, list) or not all(isinstance(c, str) and c.strip() for c in chain):
            raise fail(f"provider_fallbacks[{prov!r}] must be a list of provider names, got {chain!r}")
        p = normalize_provider(prov)
        if p is None:
            raise fail("provider_fallbacks has an empty provider name")
        norm_chain = tuple(dict.fromkeys(normalize_provider(c) for c in chain))  # type: ignore[misc]
        if p in norm_chain:
            raise fail(f"provider_fallbacks[{prov!r}] falls back to itself")
        fallbacks[p] = norm_chain  # type: ignore[assignment]

    raw_entries = data.get("entries")
    if not isinstance(raw_entries, list):
        raise fail("'entries' must be a list")

    entries: list[PriceEntry] = []
    seen: dict[tuple[str, str, date], int] = {}
    match_of: dict[str, str] = {}
    name_owner: dict[tuple[str, str], str] = {}  # (provider, model-or-alias) -> entry key
    for i, item in enumerate(raw_entries):
        where = f"entries[{i}]"
        if not isinstance(item, dict):
            raise fail(f"{where}: must be an object, got {type(item).__name__}")
        prov_raw, model_raw = item.get("provider"), item.get("model")
        if isinstance(prov_raw, str) and isinstance(model_raw, str):
            where = f"entries[{i}] ({prov_raw}/{model_raw})"
        try:
            unknown = sorted(set(item) - _ENTRY_KEYS)
            if unknown:
                raise ValueError(f"unknown key(s) {unknown}; allowed: {sorted(_ENTRY_KEYS)}")
            if not isinstance(prov_raw, str) or not prov_raw.strip():
                raise ValueError(f"'provider' must be a non-empty string, got {prov_raw!r}")
            if not isinstance(model_raw, str) or not model_raw.strip():
                raise ValueError(f"'model' must be a non-empty string, got {model_raw!r}")
            provider = normalize_provider(prov_raw)
            assert provider is not None
            model = model_raw.strip().lower()
            if "/" in model or any(c.isspace() for c in model):
                raise ValueError("'model' must be a bare model name (no '/', no whitespace)")
            match = item.get("match", "exact")
            if match not in ("exact", "prefix"):
                raise ValueError(f"'match' must be 'exact' or 'prefix', got {match!r}")
            inp = _price(item.get("input_per_1m"), "input_per_1m")
            out = _price(item.get("output_per_1m"), "output_per_1m")
            cached = _price(item.get("cached_input_per_1m"), "cached_input_per_1m", nullable=True)
            currency = item.get("currency", default_currency)
            if not isinstance(currency, str) or not _CURRENCY.match(currency):
                raise ValueError(f"'currency' must be an ISO 4217 code like 'USD', got {currency!r}")
            eff = item.get("effective_from")
            if not isinstance(eff, str) or not _ISO_DATE.match(eff):
                raise ValueError(f"'effective_from' must be an ISO date 'YYYY-MM-DD', got {eff!r}")
            try:
                eff_date = date.fromisoformat(eff)
            except ValueError:
                raise ValueError(f"'effective_from' is not a valid date: {eff!r}") from None
            aliases_raw = item.get("aliases", [])
            if not isinstance(aliases_raw, list) or not all(isinstance(a, str) and a.strip() for a in aliases_raw):
                raise ValueError(f"'aliases' must be a list of model names, got {aliases_raw!r}")
            aliases = tuple(a.strip().lower() for a in aliases_raw)
            if aliases and match == "prefix":
                raise ValueError("'aliases' are only allowed on exact-match entries")
            for a in aliases:
                if "/" in a or any(c.isspace() for c in a):
                    raise ValueError(f"alias {a!r} must be a bare model name (no '/', no whitespace)")
            for opt in ("source", "note"):
                if opt in item and not isinstance(item[opt], str):
                    raise ValueError(f"'{opt}' must be a string")

            key = f"{provider}/{model}"
            if match_of.setdefault(key, match) != match:
                raise ValueError(f"all entries for {key} must use the same 'match'")
            if (provider, model, eff_date) in seen:
                raise ValueError(
                    f"duplicate entry for {key} effective {eff} (see entries[{seen[provider, model, eff_date]}])"
                )
            seen[provider, model, eff_date] = i
            for name in (model, *aliases) if match == "exact" else ():
                owner = name_owner.setdefault((provider, name), key)
                if owner != key:
                    raise ValueError(f"name {name!r} already belongs to {owner}")
        except ValueError as exc:
            raise fail(f"{where}: {exc}") from None
        entries.append(
            PriceEntry(
                provider=provider, model=model, match=match, input_per_1m=inp,  # type: ignore[arg-type]
                output_per_1m=out, cached_input_per_1m=cached, currency=currency,  # type: ignore[arg-type]
                effective_from=eff_date, aliases=aliases, source=item.get("source"), note=item.get("note"),
            )
        )
    return _Document(version=version.strip() if version else None, entries=entries, fallbacks=fallbacks)


def _read_shipped() -> bytes:
    return resources.files(__package__ or "aitrail.collector").joinpath(PRICES_RESOURCE).read_bytes()


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

Timestamp = datetime | date | int


class PriceTable:
    """An immutable, merged price table with memoised model resolution.

    Build it once with :meth:`load` and share it; :meth:`compute_cost` is thread-safe.
    """

    def __init__(
        self,
        entries: Iterable[PriceEntry],
        *,
        version: str,
        provider_fallbacks: Mapping[str, Sequence[str]] | None = None,
        cache_size: int = _DEFAULT_CACHE_SIZE,
    ) -> None:
        self.version = version
        self._entries = tuple(entries)
        self._fallbacks = {k: tuple(v) for k, v in (provider_fallbacks or {}).items()}
        by_key: dict[str, list[PriceEntry]] = {}
        for e in self._entries:
            by_key.setdefault(e.key, []).append(e)
        self._timelines = {k: _Timeline(k, v) for k, v in by_key.items()}
        # Exact names per provider: aliases first so that a model name always wins over an alias.
        self._names: dict[str, dict[str, str]] = {}
        for e in self._entries:
            if e.match == "exact":
                names = self._names.setdefault(e.provider, {})
                for a in e.aliases:
                    names[a] = e.key
        for e in self._entries:
            if e.match == "exact":
                self._names[e.provider][e.model] = e.key
        # Prefixes per provider, longest first: the first hit is the longest matching prefix.
        prefixes: dict[str, dict[str, str]] = {}
        for e in self._entries:
            if e.match == "prefix":
                prefixes.setdefault(e.provider, {})[e.model] = e.key
        self._prefixes = {
            p: tuple(sorted(d.items(), key=lambda kv: (-len(kv[0]), kv[0]))) for p, d in prefixes.items()
        }
        self._providers = tuple(sorted(set(self._names) | set(self._prefixes)))
        self._cache: dict[tuple[str | None, str], _Timeline | str] = {}
        self._cache_size = cache_size

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def load(cls, user_file: str | os.PathLike[str] | None = None) -> PriceTable:
        """The shipped table, merged with ``user_file`` if given.

        For every provider+model the user file defines, the user's entries replace all shipped
        entries of that provider+model; its ``provider_fallbacks`` replace the shipped chain of
        the providers it names. The version becomes ``"<shipped>+user:<sha256[:8] of the file>"``.
        Raises :class:`PriceTableError` (a ``ValueError``) naming the file on any problem.
        """
        shipped = _parse_document(_read_shipped(), f"{__package__}/{PRICES_RESOURCE}", require_version=True)
        entries, fallbacks, version = shipped.entries, dict(shipped.fallbacks), shipped.version
        if user_file is not None:
            path = Path(user_file)
            try:
                raw = path.read_bytes()
            except OSError as exc:
                raise PriceTableError(f"price table {path}: cannot read: {exc.strerror or exc}") from exc
            user = _parse_document(raw, str(path), require_version=False)
            overridden = {e.key for e in user.entries}
            entries = [e for e in entries if e.key not in overridden] + user.entries
            fallbacks.update(user.fallbacks)
            version = f"{version}+user:{hashlib.sha256(raw).hexdigest()[:8]}"
        assert version is not None
        return cls(entries, version=version, provider_fallbacks=fallbacks)

    # -- introspection ------------------------------------------------------------------------

    @property
    def entries(self) -> tuple[PriceEntry, ...]:
        return self._entries

    @property
    def provider_fallbacks(self) -> dict[str, tuple[str, ...]]:
        return dict(self._fallbacks)

    def resolve(self, provider: str | None, model: str | None) -> str | None:
        """The entry key (``"openai/gpt-4o-mini"``) that prices ``model``, or None."""
        if not model:
            return None
        res = self._lookup(provider, model)
        return None if isinstance(res, str) else res.key

    # -- pricing ------------------------------------------------------------------------------

    def compute_cost(
        self,
        provider: str | None,
        model: str | None,
        input_tokens: int | None,
        output_tokens: int | None,
        cached_input_tokens: int | None = None,
        *,
        at: Timestamp,
    ) -> CostResult:
        """Price one call.

        ``provider`` is a ``gen_ai.provider.name``/``gen_ai.system`` value (or None); ``model``
        preferably ``gen_ai.response.model``. ``input_tokens`` includes ``cached_input_tokens``
        (OTel semantics). ``at`` selects the price in force (latest ``effective_from`` <= the UTC
        date of ``at``): an aware or naive (= UTC) ``datetime``, a ``date``, or an ``int`` of
        Unix nanoseconds (OTLP ``start_time_unix_nano``).
        """
        version = self.version
        if input_tokens is None and output_tokens is None:
            return CostResult(None, None, version, None, "no token usage")
        inp = 0 if input_tokens is None else input_tokens
        out = 0 if output_tokens is None else output_tokens
        cached = 0 if cached_input_tokens is None else cached_input_tokens
        if inp.__class__ is not int or out.__class__ is not int or cached.__class__ is not int:
            try:
                inp, out, cached = _as_count(inp), _as_count(out), _as_count(cached)
            except ValueError as exc:
                return CostResult(None, None, version, None, f"invalid token usage: {exc}")
        if inp < 0 or out < 0 or cached < 0:
            return CostResult(
                None, None, version, None,
                f"invalid token usage: negative count (input={inp}, output={out}, cached={cached})",
            )
        if cached > inp:
            return CostResult(
                None, None, version, None,
                f"invalid token usage: cached_input_tokens ({cached}) exceeds input_tokens ({inp})",
            )
        if not model:
            return CostResult(None, None, version, None, "no model name")

        res = self._cache.get((provider, model))
        if res is None:
            res = self._lookup(provider, model)
        if res.__class__ is str:
            return CostResult(None, None, version, None, res)  # type: ignore[arg-type]

        day = _day_ordinal(at)
        i = bisect_right(res.days, day) - 1  # type: ignore[union-attr]
        if i < 0:
            return CostResult(
                None, None, version, None,
                f"no price in force on {date.fromordinal(day).isoformat()} for {res.key}",  # type: ignore[union-attr]
            )
        r: _Rate = res.rates[i]  # type: ignore[union-attr]
        units = (inp - cached) * r.input + cached * r.cached + out * r.output
        if r.mul:
            n = units * r.mul
        else:
            n, rem = divmod(units, r.div)
            twice = rem * 2
            if twice > r.div or (twice == r.div and n & 1):
                n += 1
        amount = Decimal(n).scaleb(-AMOUNT_DECIMAL_PLACES, _CTX)
        return CostResult(amount, r.currency, version, res.key, None)  # type: ignore[union-attr]

    # -- resolution ---------------------------------------------------------------------------

    def _lookup(self, provider: str | None, model: str) -> _Timeline | str:
        cache_key = (provider, model)
        res = self._cache.get(cache_key)
        if res is None:
            res = self._resolve(provider, model)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()  # bounded: model names come from untrusted telemetry
            self._cache[cache_key] = res
        return res

    def _match_in(self, provider: str, candidates: list[str]) -> str | None:
        names = self._names.get(provider)
        if names:
            for c in candidates:
                key = names.get(c)
                if key is not None:
                    return key
        prefixes = self._prefixes.get(provider)
        if prefixes:
            full = candidates[0]
            for prefix, key in prefixes:
                if full.startswith(prefix):
                    return key
        return None

    def _resolve(self, provider: str | None, model: str) -> _Timeline | str:
        candidates = _model_candidates(normalize_model(model))
        prov = normalize_provider(provider)
        if prov is not None:
            for p in (prov, *self._fallbacks.get(prov, ())):
                key = self._match_in(p, candidates)
                if key is not None:
                    return self._timelines[key]
            return f"unknown model {model!r} for provider {provider!r}"

        # No provider: a LiteLLM-style "provider/model" prefix is a hint ...
        head = model.strip().lower().split("/", 1)[0] if "/" in model else None
        hint = _PROVIDER_ALIASES.get(head) if head else None
        if hint is not None:
            for p in (hint, *self._fallbacks.get(hint, ())):
                key = self._match_in(p, candidates)
                if key is not None:
                    return self._timelines[key]
        # ... otherwise the name must be priced by exactly one provider.
        found = [k for p in self._providers if (k := self._match_in(p, candidates)) is not None]
        if len(found) == 1:
            return self._timelines[found[0]]
        if not found:
            return f"unknown model {model!r} (no provider given)"
        return f"ambiguous model {model!r} without provider: priced by {', '.join(found)}"


def _as_count(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError(f"token count must be an integer, got {v!r}")  # noqa: TRY004 -> a reason
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    raise ValueError(f"token count must be an integer, got {v!r}")


def _day_ordinal(at: Timestamp) -> int:
    """Proleptic Gregorian ordinal of the UTC date of ``at``."""
    cls = at.__class__
    if cls is datetime or isinstance(at, datetime):
        off = at.utcoffset()  # type: ignore[union-attr]
        return (at - off).toordinal() if off else at.toordinal()  # type: ignore[operator]
    if cls is int:
        return _EPOCH_ORDINAL + at // _NS_PER_DAY  # type: ignore[operator]
    if isinstance(at, date):
        return at.toordinal()
    if isinstance(at, int) and not isinstance(at, bool):
        return _EPOCH_ORDINAL + int(at) // _NS_PER_DAY
    raise TypeError(f"'at' must be a datetime, date or int Unix nanoseconds, got {type(at).__name__}")


# ---------------------------------------------------------------------------------------------
# Module-level convenience
# ---------------------------------------------------------------------------------------------

_default_table: PriceTable | None = None


def default_price_table() -> PriceTable:
    """The shipped price table (no user file), loaded on first use and then reused."""
    global _default_table
    if _default_table is None:
        _default_table = PriceTable.load()
    return _default_table


def compute_cost(
    provider: str | None,
    model: str | None,
    input_tokens: int | None,
    output_tokens: int | None,
    cached_input_tokens: int | None = None,
    *,
    at: Timestamp,
    table: PriceTable | None = None,
) -> CostResult:
    """:meth:`PriceTable.compute_cost` on ``table`` (default: :func:`default_price_table`)."""
    return (table or default_price_table()).compute_cost(
        provider, model, input_tokens, output_tokens, cached_input_tokens, at=at
    )
