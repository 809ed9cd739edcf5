"""Sample RAG traffic for a fresh aitrail: ``python -m aitrail.demo --endpoint URL --api-key KEY``.

Sends about a week of answers from three services (support-bot, hr-assistant,
sales-copilot) through the aitrail SDK: each trace is a ``rag.answer`` root under a
``user(...)`` context with a retrieval, a prompt and a completion, with explicit timestamps
spread over the last 8 days. Some traces are pinned so the lookups in the docs work:

- last Tuesday 14:30 (Asia/Bangkok): "What is our refund policy for damaged items?"
- yesterday 09:00 (Asia/Bangkok): an HR question about parental leave
- Thai, Japanese and Chinese questions, a call that fails with a provider error, and a
  model no price table knows.

Output is reproducible: the same ``seed`` and ``now`` give the same questions, times and trace
ids (ids also depend on the calendar day of ``now``, so a rerun on the same day re-sends
the same records — ingest is idempotent — while a rerun on a later day adds fresh ones).
Imports nothing from aitrail but the SDK.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from aitrail.sdk import AitrailIdGenerator, AitrailTracing, configure

try:
    from zoneinfo import ZoneInfo

    BANGKOK: dt.tzinfo = ZoneInfo("Asia/Bangkok")
except Exception:  # no tz database: Bangkok has been UTC+7 without DST since 1920
    BANGKOK = dt.timezone(dt.timedelta(hours=7), "Asia/Bangkok")

REFUND_QUESTION = "What is our refund policy for damaged items?"
ENVIRONMENT = "production"


# --- the knowledge bases -----------------------------------------------------------------------

@dataclass(frozen=True)
class Doc:
    doc_id: str
    version: str
    title: str
    acl_tags: tuple[str, ...]
    content: str

    @property
    def source_uri(self) -> str:
        return f"kb://{self.doc_id}/{self.version}"


@dataclass(frozen=True)
class QA:
    lang: str
    question: str
    answer: str
    doc_ids: tuple[str, ...]


@dataclass(frozen=True)
class Service:
    name: str
    index: str
    template_id: str
    template_version: str
    template: str
    system: str
    users: tuple[tuple[str, tuple[str, ...]], ...]
    feature: str
    docs: tuple[Doc, ...]
    qas: tuple[QA, ...]

    def doc(self, doc_id: str) -> Doc:
        return next(d for d in self.docs if d.doc_id == doc_id)


SUPPORT = Service(
    name="support-bot",
    index="support-kb",
    template_id="support-answer",
    template_version="3",
    template=("{persona}\nAnswer the customer's question using only the context. Cite document "
              "ids in brackets. Reply in the customer's language.\n\nContext:\n{context}"),
    system="You are Acme's customer support assistant. Be concise, friendly and accurate.",
    users=(("alice@example.com", ("customer",)), ("bob@example.com", ("customer",)),
           ("somchai.k@example.co.th", ("customer",)), ("yuki.tanaka@example.jp", ("customer",)),
           ("agent.mei@example.com", ("support-agent",))),
    feature="help-widget",
    docs=(
        Doc("refund-policy", "v3", "Refund policy", ("public",),
            "Refund policy (version 3, effective 1 January 2025). Items that arrive damaged or "
            "defective can be returned within 30 days of delivery for a full refund, including "
            "the original shipping cost. The customer submits photos of the damage from the order "
            "page; no need to send the item back first for orders under 2,000 THB. Refunds go to "
            "the original payment method within 5-7 business days. Damage caused by misuse, and "
            "items bought on final sale, are not eligible; those can be repaired under warranty."),
        Doc("shipping-policy", "v2", "Shipping and delivery", ("public",),
            "Standard delivery in Thailand takes 2-4 business days (Bangkok: 1-2). Chiang Mai, "
            "Phuket and other provinces: 3-4 business days. Express delivery is next business day "
            "for orders placed before 14:00. Free shipping on orders over 1,000 THB."),
        Doc("warranty-terms", "v5", "Warranty terms", ("public",),
            "All Acme appliances carry a 2-year manufacturer warranty from the date of purchase, "
            "covering defects in materials and workmanship. Batteries are covered for 12 months. "
            "Register the product to extend the warranty by 6 months."),
        Doc("returns-playbook", "v1", "Returns handling (agents)", ("support-internal",),
            "Agents may approve refunds for damaged items up to 5,000 THB without a supervisor. "
            "Above that, escalate to the returns desk. Always attach the customer's photos to the "
            "ticket and tag it DAMAGED-IN-TRANSIT when the carrier is at fault."),
    ),
    qas=(
        QA("en", REFUND_QUESTION,
           "Items that arrive damaged or defective can be returned within 30 days of delivery for "
           "a full refund, shipping included. Upload photos of the damage from your order page; "
           "the refund reaches your original payment method within 5-7 business days "
           "[refund-policy].", ("refund-policy", "returns-playbook", "warranty-terms")),
        QA("en", "What is our refund policy?",
           "You can get a full refund within 30 days of delivery for damaged or defective items, "
           "including the shipping cost. Refunds are paid to the original payment method within "
           "5-7 business days [refund-policy].", ("refund-policy", "shipping-policy")),
        QA("en", "How long does delivery to Chiang Mai take?",
           "Standard delivery to Chiang Mai takes 3-4 business days; express orders placed "
           "before 14:00 arrive the next business day [shipping-policy].",
           ("shipping-policy", "refund-policy")),
        QA("th", "นโยบายการคืนเงินสำหรับสินค้าที่เสียหายเป็นอย่างไร",
           "สินค้าที่ได้รับแล้วชำรุดหรือเสียหายสามารถขอคืนเงินเต็มจำนวนรวมค่าจัดส่งได้ภายใน 30 วัน"
           "นับจากวันที่ได้รับสินค้า กรุณาอัปโหลดรูปถ่ายความเสียหายในหน้าคำสั่งซื้อ "
           "เงินจะคืนเข้าช่องทางชำระเงินเดิมภายใน 5-7 วันทำการ [refund-policy]",
           ("refund-policy", "returns-playbook")),
        QA("ja", "製品の保証期間はどのくらいですか？",
           "Acme の家電製品には、ご購入日から2年間のメーカー保証が付いています。バッテリーの保証は"
           "12か月です。製品登録をすると保証が6か月延長されます [warranty-terms]。",
           ("warranty-terms", "refund-policy")),
        QA("zh", "收到的商品有损坏，可以退款吗？",
           "可以。商品送达时如有损坏或缺陷，可在收货后30天内申请全额退款（含运费）。请在订单页面上传"
           "损坏照片，退款将在5–7个工作日内退回原支付方式 [refund-policy]。",
           ("refund-policy", "shipping-policy", "warranty-terms")),
    ),
)

HR = Service(
    name="hr-assistant",
    index="hr-handbook",
    template_id="hr-policy-qa",
    template_version="2",
    template=("{persona}\nAnswer employees' questions about company policy using only the "
              "handbook excerpts below, and name the policy you used.\n\nHandbook:\n{context}"),
    system="You are the internal HR assistant. Never disclose individual salaries.",
    users=(("carol@example.com", ("employee",)), ("dan@example.com", ("employee", "manager")),
           ("niran.s@example.co.th", ("employee",)), ("li.wei@example.cn", ("employee",)),
           ("hr.admin@example.com", ("employee", "hr-admin"))),
    feature="hr-chat",
    docs=(
        Doc("parental-leave", "v4", "Parental leave", ("employees",),
            "All employees with 6 months of service receive 16 weeks of fully paid parental leave "
            "for the birth or adoption of a child, to be taken within 12 months. Leave can be split "
            "into up to three blocks. Notify your manager and HR 8 weeks in advance."),
        Doc("annual-leave", "v2", "Annual leave", ("employees",),
            "Full-time employees accrue 15 working days of annual leave per year. Up to 5 unused "
            "days can be carried over to the next year and must be used by 31 March."),
        Doc("expense-policy", "v7", "Expenses", ("employees",),
            "Submit expense claims with receipts within 30 days of the expense. Claims above "
            "10,000 THB need the approval of your cost-centre owner. Reimbursement runs with the "
            "next payroll."),
        Doc("salary-bands-2025", "v1", "Salary bands 2025", ("hr-only",),
            "Salary bands for 2025 by level (L1-L8) with midpoints and ranges. Confidential: "
            "HR business partners only."),
    ),
    qas=(
        QA("en", "How many weeks of parental leave do we get?",
           "Employees with at least 6 months of service get 16 weeks of fully paid parental leave, "
           "to be taken within 12 months of the birth or adoption, in up to three blocks "
           "(Parental leave policy).", ("parental-leave", "annual-leave")),
        QA("en", "Can I carry over unused annual leave to next year?",
           "Yes, up to 5 unused days carry over, and they must be used by 31 March "
           "(Annual leave policy).", ("annual-leave", "parental-leave")),
        QA("th", "พนักงานมีวันลาพักร้อนกี่วันต่อปี",
           "พนักงานประจำมีสิทธิ์ลาพักร้อน 15 วันทำการต่อปี และยกยอดวันลาที่ไม่ได้ใช้ไปปีถัดไปได้สูงสุด 5 วัน "
           "ซึ่งต้องใช้ภายในวันที่ 31 มีนาคม (นโยบายวันลาพักร้อน)", ("annual-leave", "expense-policy")),
        QA("ja", "経費精算の締め切りはいつですか？",
           "経費精算は、支出日から30日以内に領収書を添付して提出してください。10,000バーツを超える"
           "申請にはコストセンター責任者の承認が必要です（経費規程）。", ("expense-policy", "annual-leave")),
        QA("zh", "育儿假有多少周？",
           "入职满6个月的员工可享受16周全薪育儿假，需在孩子出生或领养后12个月内休完，最多可分三段休假"
           "（育儿假政策）。", ("parental-leave", "salary-bands-2025", "annual-leave")),
    ),
)

SALES = Service(
    name="sales-copilot",
    index="sales-playbook",
    template_id="sales-brief",
    template_version="5",
    template=("{persona}\nHelp the account executive using only the playbook context. Flag "
              "anything that needs approval.\n\nContext:\n{context}"),
    system="You are a sales copilot for Acme Cloud. Quote list prices exactly; never invent discounts.",
    users=(("erin@example.com", ("sales",)), ("frank@example.com", ("sales", "sales-lead")),
           ("kenji.sato@example.jp", ("sales",)), ("ploy.r@example.co.th", ("sales",)),
           ("ceo@example.com", ("leadership", "board"))),
    feature="deal-assist",
    docs=(
        Doc("pricing-2025", "v6", "Price list 2025", ("public",),
            "Acme Cloud Enterprise: 1,200 USD per seat per year, minimum 50 seats. Business: "
            "480 USD per seat per year. Multi-year contracts are invoiced annually."),
        Doc("discount-approval", "v3", "Discount approval matrix", ("sales",),
            "Account executives may give up to 10% on 1-year deals and up to 18% on 3-year "
            "enterprise deals. Anything above needs the VP Sales; above 25% needs the CFO."),
        Doc("enterprise-sla", "v2", "Enterprise SLA", ("public",),
            "The Enterprise plan guarantees 99.95% monthly uptime. Service credits: 10% below "
            "99.95%, 25% below 99.0%. Support response within 1 hour for severity 1."),
        Doc("board-minutes-2025-q3", "v1", "Board minutes Q3 2025", ("board-only",),
            "Board discussion of the 2026 pricing change and the APAC expansion budget. "
            "Confidential: board members only."),
    ),
    qas=(
        QA("en", "What discount can I offer on a 3-year enterprise deal?",
           "You can offer up to 18% on a 3-year Enterprise deal on your own; 18-25% needs the VP "
           "Sales and more than 25% the CFO [discount-approval].",
           ("discount-approval", "pricing-2025", "board-minutes-2025-q3")),
        QA("en", "What uptime does the enterprise SLA guarantee?",
           "99.95% monthly uptime, with a 10% service credit below that and 25% below 99.0%; "
           "severity-1 tickets get a response within an hour [enterprise-sla].",
           ("enterprise-sla", "pricing-2025")),
        QA("ja", "エンタープライズプランの価格を教えてください。",
           "Acme Cloud Enterprise は1シートあたり年額1,200米ドルで、最低50シートからです。"
           "複数年契約は年単位で請求されます [pricing-2025]。", ("pricing-2025", "discount-approval")),
        QA("zh", "企业版的服务等级协议保证多少可用性？",
           "企业版保证每月99.95%的可用性；低于该水平可获得10%的服务抵扣，低于99.0%可获得25%。"
           "一级故障工单1小时内响应 [enterprise-sla]。", ("enterprise-sla", "pricing-2025")),
        QA("th", "ส่วนลดสูงสุดสำหรับสัญญาองค์กร 3 ปีคือเท่าไร",
           "สำหรับสัญญา Enterprise 3 ปี ฝ่ายขายให้ส่วนลดได้เองสูงสุด 18% หากเกินกว่านั้นต้องได้รับอนุมัติจาก "
           "VP Sales และเกิน 25% ต้องได้รับอนุมัติจาก CFO [discount-approval]",
           ("discount-approval", "pricing-2025", "enterprise-sla")),
    ),
)

SERVICES = (SUPPORT, HR, SALES)

# (model, gen_ai.provider.name, response model, weight). "northwind-llm-2" is a self-hosted
# model that no price table knows: its completions have no cost.
MODELS = (
    ("gpt-4o-mini", "openai", "gpt-4o-mini-2024-07-18", 35),
    ("gpt-4o", "openai", "gpt-4o-2024-08-06", 15),
    ("claude-3-5-sonnet-20241022", "anthropic", "claude-3-5-sonnet-20241022", 20),
    ("gemini-2.5-flash", "gcp.gemini", "gemini-2.5-flash", 15),
    ("mistral-large-2411", "mistral_ai", "mistral-large-2411", 10),
    ("northwind-llm-2", "northwind", "northwind-llm-2-0311", 5),
)
UNPRICED_MODEL = "northwind-llm-2"


class ServiceUnavailableError(Exception):
    """What a provider SDK raises on HTTP 503 (the demo's failed call)."""


@dataclass(frozen=True)
class _Plan:
    service: Service
    qa: QA
    user: tuple[str, tuple[str, ...]]
    model: tuple[str, str, str, int]
    start: dt.datetime
    fail: bool = False


@dataclass(frozen=True)
class DemoSummary:
    """What `send_sample_traffic` sent, with one answer worth looking up."""

    traces: int
    spans: int
    services: tuple[str, ...]
    languages: tuple[str, ...]
    example_trace_id: str
    example_question: str
    example_time: dt.datetime  # in Asia/Bangkok
    failed_trace_id: str | None
    endpoint: str | None
    trace_ids: tuple[str, ...] = field(default=(), repr=False)
    flushed: bool = True

    def __str__(self) -> str:
        local = self.example_time.strftime("%A %Y-%m-%d %H:%M") + " Asia/Bangkok"
        lines = [
            f"sent {self.traces} traces ({self.spans} spans) from {', '.join(self.services)}"
            + (f" to {self.endpoint}" if self.endpoint else ""),
            f"languages: {', '.join(self.languages)}",
            f"example: {self.example_question!r} asked {local}",
            f"  trace id {self.example_trace_id}",
            "  aitrail answers --q 'refund policy' --at 'last Tuesday 14:30' --tz Asia/Bangkok",
            f"  aitrail replay {self.example_trace_id}",
        ]
        if self.failed_trace_id:
            lines.append(f"failed call (provider error): trace id {self.failed_trace_id}")
        if not self.flushed:
            lines.append("warning: not every span could be exported (is the endpoint up?)")
        return "\n".join(lines)


class _Borrowed(SpanExporter):
    """An injected exporter: used, not owned, so shutting the demo down leaves it open."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._inner.export(spans)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self) -> None:
        pass


def _last_tuesday(today: dt.date) -> dt.date:
    # The most recent Tuesday strictly before today (a week ago when today is a Tuesday).
    return today - dt.timedelta(days=(today.weekday() - 1) % 7 or 7)


def _at(day: dt.date, hour: int, minute: int, second: int = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=BANGKOK)


def _model(name: str) -> tuple[str, str, str, int]:
    return next(m for m in MODELS if m[0] == name)


def _qa(service: Service, lang: str, index: int = 0) -> QA:
    return [q for q in service.qas if q.lang == lang][index]


def _plan(count: int, rng: random.Random, now: dt.datetime) -> list[_Plan]:
    today = now.astimezone(BANGKOK).date()
    day = dt.timedelta(days=1)
    pinned = [
        _Plan(SUPPORT, _qa(SUPPORT, "en"), SUPPORT.users[0], _model("gpt-4o-mini"),
              _at(_last_tuesday(today), 14, 30)),
        _Plan(HR, _qa(HR, "en"), HR.users[0], _model("claude-3-5-sonnet-20241022"),
              _at(today - day, 9, 0)),
        _Plan(SUPPORT, _qa(SUPPORT, "th"), SUPPORT.users[2], _model("gemini-2.5-flash"),
              _at(today - 2 * day, 10, 15, 41)),
        _Plan(SUPPORT, _qa(SUPPORT, "ja"), SUPPORT.users[3], _model("gpt-4o"),
              _at(today - 3 * day, 16, 40, 3)),
        _Plan(HR, _qa(HR, "zh"), HR.users[3], _model("mistral-large-2411"),
              _at(today - 4 * day, 11, 5, 27)),
        _Plan(SALES, _qa(SALES, "en"), SALES.users[0], _model("gpt-4o"),
              _at(today - 5 * day, 13, 20, 9), fail=True),
        _Plan(SALES, _qa(SALES, "ja"), SALES.users[2], _model(UNPRICED_MODEL),
              _at(today - 6 * day, 15, 45, 50)),
    ]
    plans = pinned[:count]
    earliest = now - 8 * day
    span_seconds = int((now - earliest).total_seconds()) - 600
    weights = [m[3] for m in MODELS]
    while len(plans) < count:
        service = rng.choice(SERVICES)
        start = earliest + dt.timedelta(seconds=rng.randrange(span_seconds))
        plans.append(_Plan(service, rng.choice(service.qas), rng.choice(service.users),
                           rng.choices(MODELS, weights)[0], start.astimezone(BANGKOK)))
    return plans


_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _response_id(provider: str, rng: random.Random) -> str:
    if provider == "openai":
        return "chatcmpl-" + "".join(rng.choice(_ALNUM) for _ in range(29))
    if provider == "anthropic":
        return "msg_01" + "".join(rng.choice(_ALNUM) for _ in range(22))
    return f"{rng.getrandbits(128):032x}"


def _tokens(text: str) -> int:
    # Rough: ~4 characters per token for Latin script, ~1.5 for Thai/CJK.
    wide = sum(1 for ch in text if ord(ch) > 0x0E00)
    return max(1, round((len(text) - wide) / 4 + wide / 1.5))


def _ms(value: float) -> dt.timedelta:
    return dt.timedelta(milliseconds=value)


def _send_one(tracing: AitrailTracing, plan: _Plan, rng: random.Random) -> tuple[str | None, int]:
    """One RAG answer; returns (trace id, spans sent)."""
    service, qa = plan.service, plan.qa
    model, provider, response_model, _ = plan.model
    user_id, roles = plan.user
    docs = [service.doc(d) for d in qa.doc_ids]
    context = "\n\n".join(f"[{d.doc_id}] {d.title}: {d.content}" for d in docs)
    # The template renders the system instructions; the user's question is the user message.
    instructions = service.template.format(persona=service.system, context=context)
    messages = [{"role": "user", "content": qa.question}]
    variables = {"question": qa.question, "context_doc_ids": list(qa.doc_ids), "locale": qa.lang,
                 "max_citations": 3}

    t0 = plan.start
    retrieval_end = t0 + _ms(4 + rng.uniform(15, 140))
    prompt_start = retrieval_end + _ms(0.4)
    prompt_end = prompt_start + _ms(rng.uniform(0.3, 2.5))
    completion_start = prompt_end + _ms(0.6)
    output_tokens = _tokens(qa.answer)
    completion_end = completion_start + _ms(rng.uniform(350, 900) + output_tokens * rng.uniform(12, 30))
    if plan.fail:
        completion_end = completion_start + _ms(rng.uniform(200, 600))
    root_end = completion_end + _ms(rng.uniform(2, 9))
    input_tokens = _tokens(instructions) + _tokens(qa.question) + 7
    cached = 0
    if provider in ("openai", "anthropic") and input_tokens >= 256 and rng.random() < 0.35:
        cached = input_tokens // 2

    session = f"sess-{rng.getrandbits(40):010x}"
    spans = 0
    with tracing.user(user_id, roles=roles, session_id=session, feature=service.feature):
        try:
            with tracing.span("rag.answer", start_time=t0, end_time=root_end) as root:
                spans += 1
                with tracing.retrieval(qa.question, index=service.index, top_k=4, start_time=t0 + _ms(1),
                                       end_time=retrieval_end) as r:
                    spans += 1
                    score = rng.uniform(0.78, 0.93)
                    for rank, doc in enumerate(docs, start=1):
                        r.add_document(doc.doc_id, chunk_id=f"{doc.doc_id}#0", source_uri=doc.source_uri,
                                       version=doc.version, content=doc.content, score=round(score, 4),
                                       rank=rank, acl_tags=doc.acl_tags)
                        score -= rng.uniform(0.04, 0.16)
                with tracing.prompt(service.template_id, version=service.template_version,
                                    variables=variables, template=service.template,
                                    start_time=prompt_start, end_time=prompt_end) as p:
                    spans += 1
                    p.rendered([{"role": "system", "content": instructions}, *messages])
                params = {"temperature": 0.2, "max_tokens": 512, "top_p": 1.0}
                with tracing.completion(model, provider=provider, messages=messages,
                                        system_instructions=instructions, params=params,
                                        start_time=completion_start, end_time=completion_end) as c:
                    spans += 1
                    if plan.fail:
                        raise ServiceUnavailableError(
                            "503 Service Unavailable: the model is overloaded, retry later")
                    c.response(qa.answer, response_model=response_model,
                               response_id=_response_id(provider, rng), finish_reason="stop",
                               input_tokens=input_tokens, output_tokens=output_tokens,
                               cached_input_tokens=cached or None)
        except ServiceUnavailableError:
            pass  # the service answered its user with an apology; the trace records the failure
        if not plan.fail and rng.random() < 0.2:
            good = rng.random() < 0.75
            tracing.feedback(c, 1.0 if good else -1.0, "thumbs_up" if good else "thumbs_down",
                             None if good else "The answer did not cover my case.",
                             timestamp=root_end + dt.timedelta(seconds=rng.uniform(4, 90)))
            spans += 1
    return root.trace_id, spans


def send_sample_traffic(endpoint: str | None, api_key: str | None, *, traces: int = 60, seed: int = 7,
                        now: dt.datetime | None = None,
                        exporter: SpanExporter | None = None) -> DemoSummary:
    """Send ``traces`` sample RAG answers to ``endpoint`` (an aitrail OTLP/HTTP base URL).

    Uses its own TracerProviders (one per service; the global one is untouched), flushed and
    shut down before returning. ``exporter`` replaces the OTLP exporter (tests). ``now``
    (default: the current time; naive means UTC) anchors the relative times.
    """
    now = now or dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    rng = random.Random(seed)
    plans = _plan(max(0, traces), rng, now)
    ids = AitrailIdGenerator(seed=f"aitrail-demo:{seed}:{now.astimezone(BANGKOK).date().isoformat()}")
    shared = _Borrowed(exporter) if exporter is not None else None
    tracings = {
        s.name: configure(s.name, endpoint, api_key, environment=ENVIRONMENT, set_global=False,
                          exporter=shared, id_generator=ids)
        for s in SERVICES
    }
    trace_ids: list[str] = []
    spans = 0
    failed: str | None = None
    flushed = True
    try:
        for n, plan in enumerate(plans, start=1):
            trace_id, sent = _send_one(tracings[plan.service.name], plan, rng)
            trace_ids.append(trace_id or "")
            spans += sent
            if plan.fail:
                failed = trace_id
            if n % 200 == 0:  # keep well inside the batch processor's queue
                flushed &= all(t.force_flush() for t in tracings.values())
    finally:
        flushed &= all(t.force_flush() for t in tracings.values())
        for tracing in tracings.values():
            tracing.shutdown()
    example = plans[0] if plans else None
    return DemoSummary(
        traces=len(plans),
        spans=spans,
        services=tuple(sorted({p.service.name for p in plans})),
        languages=tuple(sorted({p.qa.lang for p in plans})),
        example_trace_id=trace_ids[0] if trace_ids else "",
        example_question=example.qa.question if example else "",
        example_time=example.start if example else now.astimezone(BANGKOK),
        failed_trace_id=failed,
        endpoint=next(iter(tracings.values())).endpoint if exporter is None else None,
        trace_ids=tuple(trace_ids),
        flushed=flushed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aitrail.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint",
                        default=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                        help="aitrail OTLP/HTTP base URL (default: $OTEL_EXPORTER_OTLP_ENDPOINT, "
                             "else %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("AITRAIL_API_KEY"),
                        help="ingest key (default: $AITRAIL_API_KEY)")
    parser.add_argument("--traces", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if not args.api_key:
        print("note: no --api-key / AITRAIL_API_KEY; the server will likely refuse the spans",
              file=sys.stderr)
    summary = send_sample_traffic(args.endpoint, args.api_key, traces=args.traces, seed=args.seed)
    print(summary)
    return 0 if summary.flushed else 1


if __name__ == "__main__":
    sys.exit(main())
