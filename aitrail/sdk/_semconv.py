"""Attribute names the SDK emits.

Standard names follow the OpenTelemetry GenAI semantic conventions (now maintained in
open-telemetry/semantic-conventions-genai; the constants in
``opentelemetry.semconv._incubating`` are marked as moved, so we keep literals here instead
of importing a private, soon-to-vanish module). ``aitrail.*`` names exist only where the
conventions have nothing: prompt templates, ACL-tagged document provenance, user feedback.
"""

from __future__ import annotations

# --- GenAI (development status) ------------------------------------------------------------
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_REQUEST_TOP_K = "gen_ai.request.top_k"
GEN_AI_REQUEST_FREQUENCY_PENALTY = "gen_ai.request.frequency_penalty"
GEN_AI_REQUEST_PRESENCE_PENALTY = "gen_ai.request.presence_penalty"
GEN_AI_REQUEST_SEED = "gen_ai.request.seed"
GEN_AI_REQUEST_STOP_SEQUENCES = "gen_ai.request.stop_sequences"
GEN_AI_REQUEST_CHOICE_COUNT = "gen_ai.request.choice.count"
GEN_AI_REQUEST_STREAM = "gen_ai.request.stream"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"
GEN_AI_SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
GEN_AI_DATA_SOURCE_ID = "gen_ai.data_source.id"
GEN_AI_RETRIEVAL_QUERY_TEXT = "gen_ai.retrieval.query.text"
GEN_AI_RETRIEVAL_DOCUMENTS = "gen_ai.retrieval.documents"
GEN_AI_PROMPT_NAME = "gen_ai.prompt.name"

OPERATION_RETRIEVAL = "retrieval"

# --- general conventions ---------------------------------------------------------------------
ERROR_TYPE = "error.type"
ENDUSER_ID = "enduser.id"
USER_ROLES = "user.roles"
SESSION_ID = "session.id"
SERVICE_NAME = "service.name"
DEPLOYMENT_ENVIRONMENT_NAME = "deployment.environment.name"

# --- aitrail extensions ------------------------------------------------------------------------
AITRAIL_RETRIEVAL_QUERY = "aitrail.retrieval.query"
AITRAIL_RETRIEVAL_INDEX = "aitrail.retrieval.index"
AITRAIL_RETRIEVAL_TOP_K = "aitrail.retrieval.top_k"
AITRAIL_RETRIEVAL_DOCUMENTS = "aitrail.retrieval.documents"

AITRAIL_PROMPT_TEMPLATE_ID = "aitrail.prompt.template_id"
AITRAIL_PROMPT_TEMPLATE_VERSION = "aitrail.prompt.template_version"
AITRAIL_PROMPT_TEMPLATE_VARIABLES = "aitrail.prompt.template_variables"
AITRAIL_PROMPT_TEMPLATE = "aitrail.prompt.template"
AITRAIL_PROMPT_RENDERED = "aitrail.prompt.rendered"

AITRAIL_REQUEST_EXTRA_PARAMS = "aitrail.request.extra_params"

AITRAIL_USER_ROLES = "aitrail.user.roles"
AITRAIL_FEATURE = "aitrail.feature"

AITRAIL_FEEDBACK_SCORE = "aitrail.feedback.score"
AITRAIL_FEEDBACK_LABEL = "aitrail.feedback.label"
AITRAIL_FEEDBACK_COMMENT = "aitrail.feedback.comment"
AITRAIL_FEEDBACK_TRACE_ID = "aitrail.feedback.trace_id"
AITRAIL_FEEDBACK_SPAN_ID = "aitrail.feedback.span_id"
