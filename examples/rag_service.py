"""A tiny RAG service instrumented with aitrail.sdk.

    python examples/rag_service.py "What is our refund policy?"
    python examples/rag_service.py --user carol@example.com --roles employee,hr \\
        "How many weeks of parental leave do we get?"

Everything is local and deterministic: an in-memory document store with ACL tags, naive
keyword retrieval, a prompt template and a FAKE language model that returns canned answers
(no network, no API key for any model provider). Only the spans go out, to aitrail over
OTLP/HTTP: ``--endpoint`` / ``--api-key``, or ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``AITRAIL_API_KEY``. Needs only ``pip install aitrail`` (the SDK: OpenTelemetry packages).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass

import aitrail.sdk as trail


@dataclass(frozen=True)
class Document:
    doc_id: str
    version: str
    title: str
    acl_tags: tuple[str, ...]
    text: str


DOCUMENTS = (
    Document("refund-policy", "v3", "Refund policy", ("public",),
             "Damaged or defective items can be returned within 30 days of delivery for a full "
             "refund, including shipping. Upload photos of the damage from the order page. Refunds "
             "reach the original payment method within 5-7 business days."),
    Document("shipping-policy", "v2", "Shipping policy", ("public",),
             "Standard delivery takes 2-4 business days; express delivery arrives the next "
             "business day for orders placed before 14:00. Shipping is free over 1,000 THB."),
    Document("warranty-terms", "v5", "Warranty terms", ("public",),
             "Appliances carry a 2-year warranty against defects in materials and workmanship. "
             "Batteries are covered for 12 months."),
    Document("parental-leave", "v4", "Parental leave", ("hr",),
             "Employees with 6 months of service get 16 weeks of fully paid parental leave, to be "
             "taken within 12 months of the birth or adoption."),
    Document("board-minutes-q3", "v1", "Board minutes Q3", ("board",),
             "Confidential board discussion of the 2026 pricing change and the refund reserve."),
)

# The fake model's whole repertoire: the answer it gives when a document is the best match.
CANNED_ANSWERS = {
    "refund-policy": "Damaged or defective items can be returned within 30 days of delivery for a "
                     "full refund, shipping included. Upload photos of the damage from your order "
                     "page; the money is back on your original payment method within 5-7 business "
                     "days. [refund-policy]",
    "shipping-policy": "Standard delivery takes 2-4 business days; order before 14:00 for "
                       "next-day express delivery. Shipping is free above 1,000 THB. [shipping-policy]",
    "warranty-terms": "Our appliances have a 2-year warranty (12 months for batteries). "
                      "[warranty-terms]",
    "parental-leave": "You get 16 weeks of fully paid parental leave after 6 months of service, "
                      "to be taken within 12 months. [parental-leave]",
}
FALLBACK_ANSWER = "Sorry, I could not find that in the documents I am allowed to use."

TEMPLATE_ID, TEMPLATE_VERSION = "policy-answer", "1"
# The template renders the system instructions; the user's question goes in as the user message
# (so aitrail shows the question as asked, not the whole prompt).
TEMPLATE = ("You are Acme's assistant. Answer briefly, only from the context, and cite [doc-id]."
            "\n\nContext:\n{context}")

_WORD = re.compile(r"\w+")
_STOPWORDS = {"what", "is", "our", "the", "a", "an", "for", "of", "do", "we", "to", "how", "many",
              "get", "can", "i", "my", "in", "on", "and", "are", "does", "you"}


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS}


def visible(doc: Document, roles: set[str]) -> bool:
    return "public" in doc.acl_tags or bool(roles & set(doc.acl_tags))


def search(question: str, roles: set[str], top_k: int = 3) -> list[tuple[Document, float]]:
    """Naive keyword retrieval: share of the question's words found in the document."""
    query = _words(question)
    scored = []
    for doc in DOCUMENTS:
        if not visible(doc, roles):
            continue
        hits = len(query & _words(doc.title + " " + doc.text))
        if hits:
            scored.append((doc, round(hits / max(1, len(query)), 4)))
    scored.sort(key=lambda pair: (-pair[1], pair[0].doc_id))
    return scored[:top_k]


def fake_llm(messages: list[dict[str, str]], top_doc: Document | None) -> tuple[str, int, int]:
    """A stand-in for a chat model: a canned answer and rough token counts."""
    answer = CANNED_ANSWERS.get(top_doc.doc_id, FALLBACK_ANSWER) if top_doc else FALLBACK_ANSWER
    input_tokens = sum(len(m["content"]) for m in messages) // 4 + 4 * len(messages)
    return answer, input_tokens, max(1, len(answer) // 4)


def answer(question: str, *, model: str = "gpt-4o-mini") -> tuple[str, str | None]:
    """Answer one question for the current user; returns (answer, trace id)."""
    user = trail.current_user()
    roles = set(user.roles) if user else set()
    with trail.span("rag.answer") as root:
        with trail.retrieval(question, index="policies", top_k=3) as r:
            hits = search(question, roles)
            for doc, score in hits:
                r.add_document(doc.doc_id, version=doc.version, source_uri=f"kb://{doc.doc_id}",
                               content=doc.text, score=score, acl_tags=doc.acl_tags)
        context = "\n".join(f"[{doc.doc_id}] {doc.text}" for doc, _ in hits) or "(no documents)"
        variables = {"question": question, "context_doc_ids": [doc.doc_id for doc, _ in hits]}
        with trail.prompt(TEMPLATE_ID, version=TEMPLATE_VERSION, variables=variables,
                          template=TEMPLATE) as p:
            instructions = TEMPLATE.format(context=context)
            messages = [{"role": "system", "content": instructions}, {"role": "user", "content": question}]
            p.rendered(messages)
        with trail.completion(model, provider="openai", messages=messages[1:],
                              system_instructions=instructions,
                              params={"temperature": 0.0, "max_tokens": 256}) as c:
            text, input_tokens, output_tokens = fake_llm(messages, hits[0][0] if hits else None)
            c.response(text, response_model=model, input_tokens=input_tokens,
                       output_tokens=output_tokens)
    return text, root.trace_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A tiny RAG service that records to aitrail.")
    parser.add_argument("question")
    parser.add_argument("--endpoint",
                        default=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                        help="aitrail OTLP/HTTP base URL (default: $OTEL_EXPORTER_OTLP_ENDPOINT, "
                             "else %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("AITRAIL_API_KEY"),
                        help="aitrail ingest key (default: $AITRAIL_API_KEY)")
    parser.add_argument("--service", default=os.environ.get("OTEL_SERVICE_NAME", "policy-bot"))
    parser.add_argument("--user", default="alice@example.com", help="end-user id (pseudonymised by aitrail)")
    parser.add_argument("--roles", default="customer", help="comma-separated roles, e.g. employee,hr")
    parser.add_argument("--session", default=None)
    parser.add_argument("--feedback", choices=["up", "down"], help="also record the user's thumbs up/down")
    args = parser.parse_args(argv)

    tracing = trail.configure(args.service, args.endpoint, args.api_key, environment="dev")
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    with trail.user(args.user, roles=roles, session_id=args.session, feature="policy-chat"):
        text, trace_id = answer(args.question)
        if args.feedback and trace_id:
            trail.feedback(trace_id, 1.0 if args.feedback == "up" else -1.0, f"thumbs_{args.feedback}")
    print(text)
    print(f"trace id: {trace_id}")
    sent = tracing.force_flush(timeout_millis=10_000)
    tracing.shutdown()
    if not sent:
        print(f"warning: spans could not be sent to {tracing.endpoint}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
