"""Readable terminal output for `aitrail answers` (a table) and `aitrail replay` (a timeline)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .query_api.service import AnswersOut, TraceOut


def _local(iso: str | None, tz: str | None) -> str:
    if not iso:
        return "-"
    moment = datetime.fromisoformat(iso[:26] + "+00:00")
    return moment.astimezone(ZoneInfo(tz or "UTC")).strftime("%Y-%m-%d %H:%M:%S %Z")


def _money(cost) -> str:
    return "-" if cost.amount is None else f"{cost.amount.normalize():f} {cost.currency or ''}".strip()


def _console() -> Console:
    # Recorded text is shown as written: no markup, no emoji codes, wide enough to read.
    return Console(width=max(Console().width, 160), emoji=False, highlight=False)


def _short(text: str | None, limit: int = 160) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_answers(result: AnswersOut, tz: str | None, console: Console | None = None) -> None:
    console = console or _console()
    table = Table(title=f"{result.count} answer(s)", show_lines=True)
    for column, ratio in (("time", 2), ("question", 4), ("answer", 6), ("model", 2), ("tokens", 1),
                          ("cost", 2), ("service", 2)):
        table.add_column(column, overflow="fold", ratio=ratio)
    table.add_column("trace", no_wrap=True, min_width=32)
    for a in result.data:
        table.add_row(
            _local(a.time, tz), escape(_short(a.question)), escape(_short(a.answer)), escape(a.model or "-"),
            f"{a.input_tokens or 0}/{a.output_tokens or 0}", _money(a.cost), escape(a.service or "-"), a.trace_id,
        )
    console.print(table)
    if result.count > len(result.data):
        console.print(f"showing {len(result.data)} of {result.count}; narrow the search or raise --limit")


def render_replay(result: TraceOut, tz: str | None, console: Console | None = None) -> None:
    console = console or _console()
    say = lambda text: console.print(escape(text))  # noqa: E731  recorded text is never markup
    console.print(f"[bold]trace {result.trace_id}[/bold]  integrity: {escape(str(result.integrity.get('status')))}")
    for view in result.records:
        kind = view.get("kind")
        head = f"{_local(view.get('start_time'), tz)}  [bold]{kind}[/bold]  {escape(view.get('span_name') or '')}"
        if view.get("duration_ms") is not None:
            head += f"  ({view['duration_ms']:.0f} ms)"
        if view.get("status") == "error":
            head += f"  [red]error {escape(view.get('error_type') or '')}: {escape(view.get('error_message') or '')}[/red]"
        console.print(head)
        if kind == "retrieval":
            say(f"    query: {view.get('query_text') or view.get('question') or '-'}")
            for doc in view.get("documents", []):
                say(
                    f"    #{doc.get('rank', '-')} {doc.get('doc_id')} version {doc.get('doc_version', '?')} "
                    f"score {doc.get('score')} acl {','.join(doc.get('acl_tags', [])) or '-'} {doc.get('source_uri') or ''}"
                )
        elif kind == "prompt":
            say(f"    template {view.get('template_id')} version {view.get('template_version')}")
        elif kind == "completion":
            model = view.get("response_model") or view.get("request_model")
            cost = view.get("cost") or {}
            priced = f"{cost['amount']} {cost.get('currency', '')}" if cost.get("amount") else f"unpriced ({cost.get('reason', '-')})"
            say(
                f"    {view.get('provider')}/{model}  tokens {view.get('input_tokens')}/{view.get('output_tokens')}"
                f"  cost {priced}"
            )
            if view.get("question"):
                say(f"    Q: {view['question']}")
            if view.get("answer"):
                say(f"    A: {view['answer']}")
        elif kind == "tool":
            say(f"    tool {view.get('tool_name')}")
        if view.get("redacted"):
            say(f"    (content redacted for your role: {', '.join(view['redacted'])})")
