"""Trace context reaches every record: user, session and conversation ids set on an ancestor
span only are the record's too, whichever arrives first and in whatever batch. At write time
(collector.context, the call the collector makes before sealing) when the ancestor is known,
else at query time (answers, replay); the source span is named either way, and `verify`
(logs and derived views) still passes. On every backend."""

from __future__ import annotations

from aitrail.collector.context import inherit_context, reader_behind
from aitrail.collector.sequencing import Sequencing
from aitrail.integrity.note import Signer
from aitrail.integrity.verify import verify_logs
from aitrail.integrity.views import verify_views
from aitrail.query_api.service import QueryService
from aitrail.schemas.canonical import canonical_json
from aitrail.schemas.record import AuditRecord, record_id_for
from aitrail.store.base import AnswerQuery, Principal, Role
from tests.factories import completion, iso

SIGNER = Signer.generate("aitrail/test")
AUDITOR = Principal(key_id="test", tenant="acme", role=Role.AUDITOR)
ALICE, BOB = "u_alice0000000000000000", "u_bob000000000000000000"


def span(n: int) -> str:
    return f"{n:016x}"


def agent(trace: int, *, span_no: int = 1, parent: int | None = None, user: str | None = ALICE,
          session: str | None = "s-1", conversation: str | None = "c-1", tenant: str = "acme") -> AuditRecord:
    trace_id = f"{trace:032x}"
    return AuditRecord(
        record_id=record_id_for(tenant, trace_id, span(span_no), "agent"), kind="agent", tenant=tenant,
        trace_id=trace_id, span_id=span(span_no), parent_span_id=span(parent) if parent else None,
        start_time=iso(24, 7, 29), user_pseudonym=user, session_id=session, conversation_id=conversation,
        agent_name="support",
    )


def answer(trace: int, *, span_no: int, parent: int | None, question: str = "Where is my parcel?", **extra) -> AuditRecord:
    return completion(trace=trace, span=span_no, user=None, parent_span_id=span(parent) if parent else None,
                      question=question, time=iso(24, 7, 30, span_no % 60), **extra)


def ingest(sequencing: Sequencing, *batches: list[AuditRecord]) -> None:
    """What the collector does with each batch: inherit, then seal and store."""
    for batch in batches:
        sequencing.write(inherit_context(reader_behind(sequencing), batch))
    sequencing.tick()


def sequencing_for(store) -> Sequencing:
    return Sequencing(store, SIGNER, "aitrail/test", checkpoint_every=4, checkpoint_interval_s=0)


def assert_verified(store) -> None:
    reports = verify_logs(store, SIGNER.verifier())
    assert reports and all(r.ok for r in reports), [r.failures for r in reports]
    findings = verify_views(store)
    assert findings == [], findings


def service(store) -> QueryService:
    return QueryService(store, pseudonymise=lambda raw: "u_" + raw, verifier=SIGNER.verifier())


def answers(store, **params) -> list[dict]:
    data = service(store).answers(AUDITOR, limit=50, **params).model_dump(mode="json")["data"]
    for a in data:
        assert a["integrity"]["status"] == "verified", a
    return data


def replay(store, trace: int) -> list[dict]:
    return service(store).trace(AUDITOR, f"{trace:032x}").model_dump(mode="json")["records"]


def stored(store, record: AuditRecord) -> AuditRecord:
    got = store.get("acme", record.record_id)
    assert got is not None
    return got


def test_root_first_in_the_same_batch_fills_the_completion(store):
    root, child = agent(1), answer(1, span_no=2, parent=1)
    ingest(sequencing_for(store), [child, root])  # order within a batch does not matter
    got = stored(store, child)
    assert (got.user_pseudonym, got.session_id, got.conversation_id) == (ALICE, "s-1", "c-1")
    assert got.context_from.model_dump() == {
        "user_pseudonym": span(1), "session_id": span(1), "conversation_id": span(1)
    }
    assert got.record_id == child.record_id
    assert stored(store, root).context_from is None
    assert [(a["record_id"], a["user"], a["user_from"]) for a in answers(store, user=ALICE)] == [
        (child.record_id, ALICE, span(1))
    ]
    (view,) = [v for v in replay(store, 1) if v["record_id"] == child.record_id]
    assert view["inherited"] == {f: {"value": v, "span_id": span(1), "resolved": "ingest"}
                                 for f, v in (("user_pseudonym", ALICE), ("session_id", "s-1"),
                                              ("conversation_id", "c-1"))}
    assert_verified(store)


def test_root_in_an_earlier_batch_through_a_span_with_no_record(store):
    """completion (3) → plain function span (2, no record) → root agent (1): the broken chain
    continues at the trace's root record."""
    root, child = agent(2, session=None), answer(2, span_no=3, parent=2, conversation_id="own-conv")
    sequencing = sequencing_for(store)
    ingest(sequencing, [root], [child])
    got = stored(store, child)
    assert (got.user_pseudonym, got.session_id, got.conversation_id) == (ALICE, None, "own-conv")
    assert got.context_from.model_dump(exclude_none=True) == {"user_pseudonym": span(1)}
    assert_verified(store)


def test_nearest_ancestor_wins_and_own_values_are_kept(store):
    """root (alice) → agent (bob) → completion: bob. A completion with its own user keeps it,
    and its record is exactly what it would be without inheritance."""
    root, middle = agent(3), agent(3, span_no=2, parent=1, user=BOB, session=None, conversation=None)
    inner = answer(3, span_no=3, parent=2)
    own = completion(trace=3, span=4, user="u_carol", session_id="s-own", conversation_id="c-own",
                     parent_span_id=span(2))
    ingest(sequencing_for(store), [root], [middle, inner, own])
    got = stored(store, inner)
    assert (got.user_pseudonym, got.session_id) == (BOB, "s-1")
    assert got.context_from.model_dump() == {
        "user_pseudonym": span(2), "session_id": span(1), "conversation_id": span(1)
    }
    kept = stored(store, own)
    assert kept.context_from is None
    assert canonical_json(kept.model_copy(update={f: None for f in ("log_id", "leaf_index", "leaf_hash",
                                                                    "content_commitment", "content_salt")})) \
        == canonical_json(own)
    assert_verified(store)


def test_a_replay_after_the_ancestor_arrived_stays_a_duplicate(store):
    """The completion was sealed without a user (its root came later); delivered again, it
    keeps the stored context: a duplicate, not a conflict."""
    root, child = agent(4), answer(4, span_no=2, parent=1)
    sequencing = sequencing_for(store)
    ingest(sequencing, [child], [root])
    again = inherit_context(reader_behind(sequencing), [child])
    assert again == [child]
    result = sequencing.write(again)
    assert (result.written, result.duplicates) == (0, 1)  # a conflict would not count as a duplicate
    assert stored(store, child).user_pseudonym is None
    assert_verified(store)


def test_root_arriving_after_the_completion_is_joined_at_query_time(store):
    """The completion (and an agent between) were sealed before their root: their records stay
    as sealed, `/v1/answers?user=` finds the completion, shows the user and its source, and
    replay shows user, session and conversation with theirs."""
    middle = agent(5, span_no=2, parent=1, user=None, session=None, conversation="c-mid")
    child = answer(5, span_no=3, parent=2, question="Can I change my delivery address?")
    other = completion(trace=6, user=BOB, question="Unrelated question from bob?")
    sibling_trace = answer(7, span_no=3, parent=2, question="No root anywhere?")
    sequencing = sequencing_for(store)
    ingest(sequencing, [middle, child, other, sibling_trace])
    assert stored(store, child).user_pseudonym is None
    assert answers(store, user=ALICE) == []
    ingest(sequencing, [agent(5)])  # the root, late
    sealed = stored(store, child)
    # never rewritten: the conversation came from the agent in the same batch, nothing else
    assert (sealed.user_pseudonym, sealed.conversation_id) == (None, "c-mid")
    assert sealed.context_from.model_dump(exclude_none=True) == {"conversation_id": span(2)}

    page = store.search_answers(AnswerQuery(tenant="acme", user=ALICE))
    assert [a.record_id for a in page.answers] == [child.record_id]
    assert page.count == 1
    assert page.answers[0].user is None  # the derived row is what the record derives
    found = answers(store, user=ALICE)
    assert [(a["record_id"], a["user"], a["user_from"]) for a in found] == [(child.record_id, ALICE, span(1))]
    assert [a["record_id"] for a in answers(store, user=BOB)] == [other.record_id]
    everyone = {a["record_id"]: (a["user"], a["user_from"]) for a in answers(store)}
    assert everyone[child.record_id] == (ALICE, span(1))
    assert everyone[sibling_trace.record_id] == (None, None)
    assert everyone[other.record_id] == (BOB, None)
    # the other filters still apply to the answers found through an ancestor
    assert answers(store, user=ALICE, service="another-bot") == []
    assert [a["record_id"] for a in answers(store, user=ALICE, at=iso(24, 7, 30), window="5m")] == [child.record_id]
    assert answers(store, user=ALICE, at=iso(24, 9, 0), window="5m") == []

    views = {v["record_id"]: v for v in replay(store, 5)}
    assert views[child.record_id]["inherited"] == {
        "user_pseudonym": {"value": ALICE, "span_id": span(1), "resolved": "query"},
        "session_id": {"value": "s-1", "span_id": span(1), "resolved": "query"},
        "conversation_id": {"value": "c-mid", "span_id": span(2), "resolved": "ingest"},
    }
    assert "user_pseudonym" not in views[child.record_id]  # the sealed field stays empty
    assert views[middle.record_id]["inherited"]["user_pseudonym"]["span_id"] == span(1)
    assert "inherited" not in views[agent(5).record_id]
    assert_verified(store)


def test_the_nearest_user_decides_at_query_time(store):
    """root (alice) → agent (bob) → completion, the agent and the completion sealed first:
    the completion is bob's, not alice's."""
    middle = agent(8, span_no=2, parent=1, user=BOB)
    child = answer(8, span_no=3, parent=2)
    sequencing = sequencing_for(store)
    ingest(sequencing, [child], [middle])  # the agent after the completion
    ingest(sequencing, [agent(8)])  # the root last
    assert answers(store, user=ALICE) == []
    assert [(a["record_id"], a["user"], a["user_from"]) for a in answers(store, user=BOB)] == [
        (child.record_id, BOB, span(2))
    ]
    assert_verified(store)


def test_stored_copies_are_read_in_real_time(store):
    """A record stored but not yet searchable (OpenSearch within its refresh interval) is
    still found by id, so a replay of it keeps the stored context."""
    if hasattr(store, "records_pattern"):  # OpenSearch: nothing becomes searchable on its own
        store.refresh = False
        store._client.indices.put_settings(index=store.records_pattern, body={"index": {"refresh_interval": "-1"}})
    child = answer(9, span_no=2, parent=1)
    sequencing_for(store).write([child])
    if hasattr(store, "records_pattern"):
        assert store.trace("acme", child.trace_id) == []  # not searchable: the case under test
    (found,) = store.span_contexts([("acme", child.trace_id)], [child.record_id])
    assert (found.record_id, found.span_id, found.parent_span_id) == (child.record_id, span(2), span(1))
    assert found.values == (None, None, None)
    assert store.span_contexts([("acme", child.trace_id)]) == ([] if hasattr(store, "records_pattern") else [found])


def _otlp(*spans: dict):
    """An export request of plain OTLP spans: name, span/parent numbers, kind, attributes."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for s in spans:
        sp = scope.spans.add(trace_id=(90).to_bytes(16, "big"), span_id=s["span"].to_bytes(8, "big"),
                             parent_span_id=s["parent"].to_bytes(8, "big") if s.get("parent") else b"",
                             name=s["name"], kind=s.get("kind", Span.SPAN_KIND_INTERNAL),
                             start_time_unix_nano=1_722_250_000_000_000_000, end_time_unix_nano=1_722_250_001_000_000_000)
        for key, value in s["attrs"].items():
            sp.attributes.add(key=key).value.string_value = value
    return request


def _normalised(request) -> list[AuditRecord]:
    from aitrail.collector.normalise import normalise_traces

    return normalise_traces(request, "acme", ingested_at=iso(24, 7, 30), pseudonymise=lambda raw: "u_" + raw)


def _web_request() -> tuple[list[AuditRecord], list[AuditRecord]]:
    """A web framework's SERVER span (the only one carrying the user and session) → a plain
    handler span (no record) → a chat span: the server span ends last, in its own export."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    chat = _otlp({"name": "chat", "span": 3, "parent": 2, "attrs": {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.input.messages": '[{"role": "user", "parts": [{"type": "text", "content": "Where is order 77?"}]}]',
        "gen_ai.output.messages": '[{"role": "assistant", "parts": [{"type": "text", "content": "On its way."}]}]',
    }}, {"name": "handle_chat", "span": 2, "parent": 1, "attrs": {"code.function.name": "handle_chat"}})
    server = _otlp({"name": "POST /chat", "span": 1, "kind": Span.SPAN_KIND_SERVER, "attrs": {
        "http.request.method": "POST", "http.route": "/chat", "user.id": "dana", "session.id": "s-web",
    }})
    return _normalised(chat), _normalised(server)


def test_a_plain_http_server_span_gives_its_user_whichever_arrives_first(store):
    """The web-framework case: the user is on the plain SERVER span only. Kept as a `context`
    record, it gives the chat answer its user at query time when it arrives last, and at
    write time when it arrives first, through the handler span that has no record."""
    chat_records, server_records = _web_request()
    assert [r.kind for r in chat_records] == ["completion"] and [r.kind for r in server_records] == ["context"]
    (chat,), (server,) = chat_records, server_records
    sequencing = sequencing_for(store)
    ingest(sequencing, chat_records, server_records)  # server span last: query time
    assert stored(store, chat).user_pseudonym is None
    found = answers(store, user="u_dana")
    assert [(a["record_id"], a["user"], a["user_from"]) for a in found] == [(chat.record_id, "u_dana", span(1))]
    views = {v["record_id"]: v for v in replay(store, 90)}
    assert views[chat.record_id]["inherited"]["session_id"] == {"value": "s-web", "span_id": span(1), "resolved": "query"}
    assert views[server.record_id]["kind"] == "context"
    assert_verified(store)


def test_a_plain_http_server_span_arriving_first_fills_the_record_at_write_time(store):
    chat_records, server_records = _web_request()
    sequencing = sequencing_for(store)
    ingest(sequencing, server_records, chat_records)  # server span first: write time
    sealed = stored(store, chat_records[0])
    assert (sealed.user_pseudonym, sealed.session_id) == ("u_dana", "s-web")
    assert sealed.context_from.model_dump(exclude_none=True) == {"user_pseudonym": span(1), "session_id": span(1)}
    assert [a["user_from"] for a in answers(store, user="u_dana")] == [span(1)]
    assert_verified(store)
