"""Readable terminal output for `aitrail answers` (a table) and `aitrail replay` (a timeline)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.table import Table

from .query_api.service import AnswersOut, TraceOut


def _local(iso: str | None, tz: str | None) -> str:
    if not iso:
        return "-"
    moment = datetime.fromisoformat(iso[:26] + "+00:00")
    return moment.astimezone(ZoneInfo(tz or "UTC")).strftime("%Y-%m-%d %H:%M:%S %Z")


def _money(cost) -> str:
    return "-" if cost.amount is None else f"{cost.amount.normalize():f} {cost.currency or ''}".strip()


def render_answers(result: AnswersOut, tz: str | None, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"{result.count} answer(s)", show_lines=True)
    for column in ("time", "question", "answer", "model", "tokens in/out", "cost", "service", "trace"):
        table.add_column(column, overflow="fold")
    for a in result.data:
        table.add_row(
            _local(a.time, tz), a.question or "", a.answer or "", a.model or "-",
            f"{a.input_tokens or 0}/{a.output_tokens or 0}", _money(a.cost), a.service or "-", a.trace_id,
        )
    console.print(table)
    if result.count > len(result.data):
        console.print(f"showing {len(result.data)} of {result.count}; narrow the search or raise --limit")


def render_replay(result: TraceOut, tz: str | None, console: Console | None = None) -> None:
    console = console or Console()
    console.print(f"[bold]trace {result.trace_id}[/bold]  integrity: {result.integrity.get('status')}")
    for view in result.records:
        kind = view.get("kind")
        head = f"{_local(view.get('start_time'), tz)}  [bold]{kind}[/bold]  {view.get('span_name') or ''}"
        if view.get("duration_ms") is not None:
            head += f"  ({view['duration_ms']:.0f} ms)"
        if view.get("status") == "error":
            head += f"  [red]error {view.get('error_type') or ''}: {view.get('error_message') or ''}[/red]"
        console.print(head)
        if kind == "retrieval":
            console.print(f"    query: {view.get('query_text') or view.get('question') or '-'}")
            for doc in view.get("documents", []):
                console.print(
                    f"    #{doc.get('rank', '-')} {doc.get('doc_id')} v{doc.get('doc_version', '?')} "
                    f"score={doc.get('score')} acl={','.join(doc.get('acl_tags', []))} {doc.get('source_uri') or ''}"
                )
        elif kind == "prompt":
            console.print(f"    template {view.get('template_id')} v{view.get('template_version')}")
        elif kind == "completion":
            model = view.get("response_model") or view.get("request_model")
            cost = view.get("cost") or {}
            console.print(
                f"    {view.get('provider')}/{model}  tokens {view.get('input_tokens')}/{view.get('output_tokens')}"
                f"  cost {cost.get('amount', '-')} {cost.get('currency', '') or cost.get('reason', '')}"
            )
            if view.get("question"):
                console.print(f"    Q: {view['question']}")
            if view.get("answer"):
                console.print(f"    A: {view['answer']}")
        elif kind == "tool":
            console.print(f"    tool {view.get('tool_name')}")
