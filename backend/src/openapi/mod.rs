//! The OpenAPI 3.1 description of every HTTP API: the backend's
//! ([`backend`], served at `GET /openapi.json`) and the edge's ([`edge`],
//! committed as `edge/openapi.json`; the public doors only).
//!
//! Built with utoipa from the Rust types where they are defined: the wire
//! types of `protocol` (feature `openapi`, their limits from its constants),
//! the response types of [`schemas`], and the errors each operation can
//! answer with, as values of `backend::Error` and `intake::Error`: their
//! statuses, codes and bodies come from `error.rs` of each crate (the one
//! mapping), never retyped here. What is listed per operation is the set of
//! variants its handler can return; `tests/tests/openapi.rs` sends a request
//! for every status listed and checks the answer against the description.

pub mod schemas;

use std::collections::BTreeMap;

use protocol::{Envelope, ErrorBody, IngestResponse, Reports};
use serde_json::{json, Value};
use utoipa::{
    openapi::{
        content::ContentBuilder,
        header::HeaderBuilder,
        info::InfoBuilder,
        path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn},
        request_body::RequestBodyBuilder,
        response::ResponseBuilder,
        schema::{AllOfBuilder, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type},
        security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        },
        tag::TagBuilder,
        Components, ComponentsBuilder, OpenApi, OpenApiBuilder, Paths, Ref, RefOr, Required,
        Response, ServerBuilder,
    },
    ToSchema,
};

use crate::{config::Config, error::Error};

/// `gzip`, `x-gzip`, `identity` or nothing, in any case, blanks around
/// (`api::is_gzip`, `intake::events::decode_body`).
pub const CONTENT_ENCODING: &str =
    "^[ \\t]*([gG][zZ][iI][pP]|[xX]-[gG][zZ][iI][pP]|[iI][dD][eE][nN][tT][iI][tT][yY])?[ \\t]*$";

/// Security scheme names.
pub const INGEST_TOKEN: &str = "ingest_token";
pub const READ_TOKEN: &str = "read_token";
pub const API_KEY: &str = "api_key";
pub const API_KEY_QUERY: &str = "api_key_query";
pub const WRITE_KEY_BASIC: &str = "write_key_basic";

/// The environment the examples write to and read (a fresh catalog's first).
pub const EXAMPLE_ENV_ID: u32 = 1;
pub const EXAMPLE_ENV: &str = "shop";

/// Which runtime serves the public doors: their sinks fail differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// The Cloudflare worker: a queue behind the door.
    Edge,
    /// The backend's direct ingest: the group-commit writer.
    Backend,
}

/// The backend's description, with the limits `config` serves with.
pub fn backend(config: &Config) -> OpenApi {
    let mut paths = Paths::new();
    for op in backend_operations(config)
        .into_iter()
        .chain(public_operations(Runtime::Backend))
    {
        op.add_to(&mut paths);
    }
    let mut components = components();
    for (name, schema) in [
        ("Batch", batch_schema(config.max_batch_events)),
        ("PublicEvent", schemas::public_event()),
        (
            "PublicBody",
            schemas::public_body(intake::Limits::default().max_events),
        ),
    ] {
        components.schemas.insert(name.to_owned(), schema);
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Sluice backend")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(BACKEND_INFO))
                .build(),
        )
        .tags(Some(tags(true)))
        .paths(paths)
        .components(Some(components))
        .build()
}

/// The edge worker's description: the public doors and `/healthz`.
pub fn edge() -> OpenApi {
    let mut paths = Paths::new();
    for op in public_operations(Runtime::Edge) {
        op.add_to(&mut paths);
    }
    health().add_to(&mut paths);
    let mut components = components();
    components.schemas.retain(|name, _| {
        [
            "ErrorBody",
            "Health",
            "Accepted",
            "SegmentAccepted",
            "SegmentSettings",
            "Rejected",
        ]
        .contains(&name.as_str())
    });
    components
        .security_schemes
        .retain(|name, _| [API_KEY, API_KEY_QUERY, WRITE_KEY_BASIC].contains(&name.as_str()));
    for (name, schema) in [
        ("PublicEvent", schemas::public_event()),
        (
            "PublicBody",
            schemas::public_body(intake::Limits::default().max_events),
        ),
    ] {
        components.schemas.insert(name.to_owned(), schema);
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Sluice edge")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(EDGE_INFO))
                .build(),
        )
        .servers(Some([ServerBuilder::new()
            .url("http://127.0.0.1:8787")
            .description(Some(
                "wrangler dev (make dev); in production the worker's route",
            ))
            .build()]))
        .tags(Some(tags(false)))
        .paths(paths)
        .components(Some(components))
        .build()
}

/// `edge/openapi.json` as committed: [`edge`], pretty, with a final newline.
pub fn edge_json() -> String {
    let mut text = edge().to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

const BACKEND_INFO: &str = "Sluice's backend: batch ingest from the edge (`/v1/ingest`), \
the delivery ledger's reports, the stats and export API (read tokens), health and metrics, \
and direct ingest: the public API (`/v1/events`, the Segment-compatible endpoints) \
through the same doors as the edge. Every error body is `ErrorBody`. \
Limits that JSON Schema cannot say (bytes of UTF-8, the serialized size of \
`properties` + `context` + `traits`) are in the descriptions; past them the answer is 413 or 422.";

const EDGE_INFO: &str = "Sluice's edge worker: the public API (`/v1/events`, the \
Segment-compatible endpoints and the browser SDK's settings) and `/healthz`. The same \
doors, statuses and bodies as the backend's direct ingest, except that an accepted \
`/v1/events` request is answered before the queue took it (unless `Prefer: wait`).";

fn tags(backend: bool) -> Vec<utoipa::openapi::Tag> {
    let mut list = vec![
        (
            "public",
            "The public API: /v1/events and the Segment-compatible endpoints (API key)",
        ),
        ("health", "Liveness"),
    ];
    if backend {
        list.extend([
            ("ingest", "Batches from the edge (ingest token)"),
            (
                "stats",
                "Counters, ledger, live stream and tail (read token)",
            ),
            ("export", "Raw events as NDJSON (read token)"),
            (
                "operations",
                "Readiness, metrics, this description, the dashboard",
            ),
        ]);
    }
    list.into_iter()
        .map(|(name, text)| TagBuilder::new().name(name).description(Some(text)).build())
        .collect()
}

fn components() -> Components {
    let bearer = |text: &str| {
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(text))
                .build(),
        )
    };
    let mut builder = ComponentsBuilder::new();
    let mut all = Vec::new();
    with_dependencies::<Envelope>(&mut all);
    with_dependencies::<IngestResponse>(&mut all);
    // Named by a schema_with (IngestResponse::environments), so not collected by it.
    with_dependencies::<protocol::EnvCounts>(&mut all);
    with_dependencies::<Reports>(&mut all);
    with_dependencies::<ErrorBody>(&mut all);
    with_dependencies::<crate::ingest::Reported>(&mut all);
    with_dependencies::<schemas::Health>(&mut all);
    with_dependencies::<schemas::Ready>(&mut all);
    with_dependencies::<schemas::Summary>(&mut all);
    with_dependencies::<schemas::Series>(&mut all);
    with_dependencies::<crate::stats::Delivery>(&mut all);
    with_dependencies::<crate::delivery::Ledger>(&mut all);
    with_dependencies::<schemas::Accepted>(&mut all);
    with_dependencies::<schemas::SegmentAccepted>(&mut all);
    with_dependencies::<schemas::SegmentSettings>(&mut all);
    for (name, schema) in all {
        builder = builder.schema(name, schema);
    }
    builder
        .security_scheme(
            INGEST_TOKEN,
            bearer("SLUICE_INGEST_TOKEN, shared by the edge and the backend"),
        )
        .security_scheme(
            READ_TOKEN,
            bearer("A read token of the environment named by `env` (`backend env token NAME`)"),
        )
        .security_scheme(
            API_KEY,
            bearer("A public API key (`sk_…`, `backend key create ENV`); on the Segment endpoints the write key"),
        )
        .security_scheme(
            API_KEY_QUERY,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "key",
                "The API key as `?key=` (for `navigator.sendBeacon`, which sends no headers)",
            ))),
        )
        .security_scheme(
            WRITE_KEY_BASIC,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "Segment's way: the write key as the user name, the password empty. \
                         The browser SDK sends it as `writeKey` in the body instead.",
                    ))
                    .build(),
            ),
        )
        .build()
}

/// `T` and every schema it refers to.
fn with_dependencies<T: ToSchema>(all: &mut Vec<(String, RefOr<Schema>)>) {
    all.push((T::name().into_owned(), T::schema()));
    T::schemas(all);
}

fn schema_ref(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

fn batch_schema(max_events: usize) -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(schema_ref(&Envelope::name()))
        .min_items(Some(1))
        .max_items(Some(max_events))
        .description(Some(
            "Envelopes (protocol/README.md), all or nothing; at most SLUICE_MAX_BATCH_EVENTS \
             (more: 413), SLUICE_MAX_BODY_BYTES after decompression (more: 413), each \
             envelope's properties + context + traits at most protocol::MAX_PAYLOAD_BYTES \
             serialized (more: 422). An env_id the catalog does not know is 422.",
        ))
        .into()
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

/// What an error of an operation answers: status, code, body, headers.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: u16,
    pub code: &'static str,
    pub body: ErrorBody,
    pub headers: Vec<&'static str>,
}

impl Failure {
    fn backend(e: Error) -> Self {
        let status = e.status().as_u16();
        let mut headers = Vec::new();
        if status == 503 {
            headers.push("Retry-After");
        }
        if status == 401 {
            // No WWW-Authenticate from the backend's own routes.
        }
        Self {
            status,
            code: e.code(),
            body: e.body(),
            headers,
        }
    }

    fn door(e: intake::Error, door: intake::Door) -> Self {
        let mut headers: Vec<&'static str> = e.headers().into_iter().map(|(h, _)| h).collect();
        let status = e.status_at(door);
        if status == 503 && !headers.contains(&"Retry-After") {
            headers.push("Retry-After");
        }
        Self {
            status,
            code: e.code(),
            body: e.body(),
            headers,
        }
    }
}

/// One operation: its success answers and the errors it can answer with.
pub struct Operation {
    pub method: HttpMethod,
    pub path: String,
    pub id: String,
    pub tag: &'static str,
    pub summary: String,
    pub description: Option<String>,
    /// Alternatives (each a list of schemes that must all hold); empty: none.
    pub security: Vec<Vec<&'static str>>,
    pub parameters: Vec<utoipa::openapi::path::Parameter>,
    pub body: Option<utoipa::openapi::request_body::RequestBody>,
    /// Success answers (and 207/503 with a body of their own).
    pub answers: Vec<(u16, Response)>,
    pub failures: Vec<Failure>,
}

impl Operation {
    fn new(method: HttpMethod, path: &str, id: &str, tag: &'static str, summary: &str) -> Self {
        Self {
            method,
            path: path.to_owned(),
            id: id.to_owned(),
            tag,
            summary: summary.to_owned(),
            description: None,
            security: Vec::new(),
            parameters: Vec::new(),
            body: None,
            answers: Vec::new(),
            failures: Vec::new(),
        }
    }

    fn describe(mut self, text: &str) -> Self {
        self.description = Some(text.to_owned());
        self
    }

    fn secured(mut self, alternatives: &[&[&'static str]]) -> Self {
        self.security = alternatives.iter().map(|a| a.to_vec()).collect();
        self
    }

    fn param(mut self, p: utoipa::openapi::path::Parameter) -> Self {
        self.parameters.push(p);
        self
    }

    fn body(mut self, body: utoipa::openapi::request_body::RequestBody) -> Self {
        self.body = Some(body);
        self
    }

    fn answer(mut self, status: u16, response: Response) -> Self {
        self.answers.push((status, response));
        self
    }

    fn fails(mut self, errors: impl IntoIterator<Item = Error>) -> Self {
        self.failures
            .extend(errors.into_iter().map(Failure::backend));
        self
    }

    fn fails_at(
        mut self,
        door: intake::Door,
        errors: impl IntoIterator<Item = intake::Error>,
    ) -> Self {
        self.failures
            .extend(errors.into_iter().map(|e| Failure::door(e, door)));
        self
    }

    /// Every status this operation lists, answers and failures.
    pub fn statuses(&self) -> Vec<u16> {
        let mut all: Vec<u16> = self
            .answers
            .iter()
            .map(|(s, _)| *s)
            .chain(self.failures.iter().map(|f| f.status))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    fn add_to(self, paths: &mut Paths) {
        let mut op = OperationBuilder::new()
            .operation_id(Some(self.id.clone()))
            .summary(Some(self.summary.clone()))
            .description(self.description.clone())
            .tag(self.tag);
        for p in self.parameters {
            op = op.parameter(p);
        }
        if let Some(body) = self.body {
            op = op.request_body(Some(body));
        }
        if !self.security.is_empty() {
            let requirements: Vec<SecurityRequirement> = self
                .security
                .iter()
                .map(|schemes| {
                    schemes.iter().fold(SecurityRequirement::default(), |r, s| {
                        r.add(*s, Vec::<String>::new())
                    })
                })
                .collect();
            op = op.securities(Some(requirements));
        }
        // Errors grouped by status; a status that is also a success answer
        // (503 of /v1/ingest) takes either body.
        let mut by_status: BTreeMap<u16, Vec<Failure>> = BTreeMap::new();
        for f in self.failures {
            by_status.entry(f.status).or_default().push(f);
        }
        let mut answers: BTreeMap<u16, Response> = self.answers.into_iter().collect();
        for (status, failures) in by_status {
            let codes: Vec<&str> = {
                let mut c: Vec<&str> = failures.iter().map(|f| f.code).collect();
                c.dedup();
                c
            };
            let error_schema: RefOr<Schema> = AllOfBuilder::new()
                .item(schema_ref("ErrorBody"))
                .item(
                    ObjectBuilder::new()
                        .property("error", string().enum_values(Some(codes.iter().copied()))),
                )
                .into();
            let mut examples = Vec::new();
            let mut seen = Vec::new();
            for f in &failures {
                if !seen.contains(&f.code) {
                    seen.push(f.code);
                    examples.push((
                        f.code.to_owned(),
                        utoipa::openapi::example::ExampleBuilder::new()
                            .summary(f.code)
                            .value(serde_json::to_value(&f.body).ok())
                            .build(),
                    ));
                }
            }
            let mut headers: Vec<&str> = failures.iter().flat_map(|f| f.headers.clone()).collect();
            headers.sort_unstable();
            headers.dedup();
            let response = match answers.remove(&status) {
                Some(mut answer) => {
                    // One body or the other: the answer's own, or an error.
                    if let Some(content) = answer.content.get_mut("application/json") {
                        if let Some(own) = content.schema.take() {
                            content.schema =
                                Some(OneOfBuilder::new().item(own).item(error_schema).into());
                        }
                        for (name, example) in examples {
                            content.examples.insert(name, RefOr::T(example));
                        }
                    }
                    for h in headers {
                        answer
                            .headers
                            .entry(h.to_owned())
                            .or_insert_with(|| header(h));
                    }
                    answer
                }
                None => {
                    let mut content = ContentBuilder::new().schema(Some(error_schema));
                    for (name, example) in examples {
                        content = content.examples_from_iter([(name, example)]);
                    }
                    let mut response = ResponseBuilder::new()
                        .description(format!("Refused: {}", codes.join(", ")))
                        .content("application/json", content.build());
                    for h in headers {
                        response = response.header(h, header(h));
                    }
                    response.build()
                }
            };
            answers.insert(status, response);
        }
        for (status, response) in answers {
            op = op.response(status.to_string(), response);
        }
        paths.add_path_operation(self.path, vec![self.method], op.build());
    }
}

fn header(name: &str) -> utoipa::openapi::header::Header {
    let (schema, text) = match name {
        "Retry-After" => (
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
            "Seconds to wait before retrying",
        ),
        "Allow" => (string(), "The methods this path takes"),
        "WWW-Authenticate" => (string(), "The scheme to authenticate with (Bearer)"),
        _ => (string(), ""),
    };
    HeaderBuilder::new()
        .schema(schema)
        .description(Some(text))
        .build()
}

fn json_answer(text: &str, schema: &str, example: Option<Value>) -> Response {
    ResponseBuilder::new()
        .description(text)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(schema_ref(schema)))
                .example(example)
                .build(),
        )
        .build()
}

fn typed_answer(text: &str, content_type: &str, schema: ObjectBuilder) -> Response {
    ResponseBuilder::new()
        .description(text)
        .content(
            content_type,
            ContentBuilder::new().schema(Some(schema)).build(),
        )
        .build()
}

fn query(
    name: &str,
    required: bool,
    schema: ObjectBuilder,
    text: &str,
    example: Option<Value>,
) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(if required {
            Required::True
        } else {
            Required::False
        })
        .schema(Some(schema))
        .description(Some(text))
        .example(example)
        .build()
}

fn header_param(name: &str, schema: ObjectBuilder, text: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .schema(Some(schema))
        .description(Some(text))
        .build()
}

fn json_body(
    schema: RefOr<Schema>,
    examples: Vec<(&str, Value)>,
) -> utoipa::openapi::request_body::RequestBody {
    let mut content = ContentBuilder::new().schema(Some(schema));
    for (name, value) in examples {
        content = content.examples_from_iter([(
            name,
            utoipa::openapi::example::ExampleBuilder::new()
                .summary(name)
                .value(Some(value))
                .build(),
        )]);
    }
    RequestBodyBuilder::new()
        .content("application/json", content.build())
        .required(Some(Required::True))
        .build()
}

/// A time: RFC 3339 or epoch milliseconds (`intake::time`).
fn time_param() -> ObjectBuilder {
    string().description(Some(
        "RFC 3339 (`2023-11-14T22:13:20Z`) or epoch milliseconds, from 1970 on",
    ))
}

fn env_param() -> utoipa::openapi::path::Parameter {
    query(
        "env",
        true,
        string().min_length(Some(1)),
        "The environment's name; the read token must be one of its own (else 403)",
        Some(json!(EXAMPLE_ENV)),
    )
}

/// What every read-token route can answer before its handler runs (`stats::ReadAuth`).
fn read_auth_errors() -> Vec<Error> {
    vec![
        Error::MissingAuth,
        Error::BadToken,
        Error::InvalidArgument(
            "env",
            "the env parameter (an environment name) is required".into(),
        ),
        Error::Forbidden,
        Error::Catalog("the read token could not be looked up".into()),
    ]
}

/// What a read of the environment's shard answers when the shard is down.
fn shard_read_errors() -> Vec<Error> {
    vec![Error::Database(sqlx::Error::PoolTimedOut)]
}

/// What `stats::range` refuses.
fn range_errors() -> Vec<Error> {
    vec![
        Error::InvalidArgument(
            "from",
            "\"yesterday\" is neither RFC 3339 nor epoch milliseconds (from 1970 on)".into(),
        ),
        Error::InvalidArgument("range", "from must be before to".into()),
    ]
}

fn range_params(op: Operation) -> Operation {
    op.param(query(
        "from",
        false,
        time_param(),
        "Start (inclusive); default: 24 hours before `to`. Must be before `to` (else 400)",
        Some(json!("1700000000000")),
    ))
    .param(query(
        "to",
        false,
        time_param(),
        "End (exclusive); default: now",
        Some(json!("1700003600000")),
    ))
}

/// Every operation of the backend's own routes (`api::app`).
pub fn backend_operations(config: &Config) -> Vec<Operation> {
    use HttpMethod::{Get, Post};
    let ingest_example = vec![(
        "one envelope",
        json!([{
            "id": "order-1", "env_id": EXAMPLE_ENV_ID, "name": "purchase",
            "timestamp": 1_700_000_000_000i64, "received_at": 1_700_000_000_000i64,
            "properties": {"amount": 12.5}, "context": {}
        }]),
    )];
    let ingest = Operation::new(Post, "/v1/ingest", "ingest", "ingest", "Land a batch of envelopes")
        .describe(
            "Called by the edge's queue consumer. 200: every envelope landed (inserted, \
             or already stored); 207: some environments landed, `retry` lists the ids to \
             resend; 503: nothing landed (`retry` lists every id), or the catalog is \
             unreachable for an environment the last snapshot does not know. \
             `Content-Encoding: gzip` is taken.",
        )
        .secured(&[&[INGEST_TOKEN]])
        .param(header_param(
            "Content-Encoding",
            string().pattern(Some(CONTENT_ENCODING)),
            "gzip, or none",
        ))
        .body(json_body(schema_ref("Batch"), ingest_example))
        .answer(
            200,
            json_answer(
                "Every envelope landed",
                "IngestResponse",
                Some(json!({"environments": {"1": {"inserted": 1, "duplicates": 0, "dropped": 0}}, "retry": [], "failures": []})),
            ),
        )
        .answer(
            207,
            ResponseBuilder::new()
                .description("Some environments landed; resend the `retry` ids")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(schema_ref("IngestResponse")))
                        .build(),
                )
                .header("Retry-After", header("Retry-After"))
                .build(),
        )
        .answer(
            503,
            ResponseBuilder::new()
                .description("Nothing landed; resend after Retry-After")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(schema_ref("IngestResponse")))
                        .build(),
                )
                .header("Retry-After", header("Retry-After"))
                .build(),
        )
        .fails(body_errors(config, true))
        .fails([Error::Catalog("the catalog did not answer within 2 s".into())]);

    let reports = Operation::new(
        Post,
        "/v1/ingest/reports",
        "ingest_reports",
        "ingest",
        "Record the doors' reports and dead letters in the delivery ledger",
    )
    .secured(&[&[INGEST_TOKEN]])
    .body(json_body(
        schema_ref("Reports"),
        vec![(
            "a refusal",
            json!({"reports": [{"id": "0123456789abcdef0123456789abcdef", "env_id": EXAMPLE_ENV_ID,
                    "received_at": 1_700_000_000_000i64, "rejected": {"invalid_json": 1}}]}),
        )],
    ))
    .answer(
        200,
        json_answer(
            "Recorded (idempotent by report id)",
            "Reported",
            Some(json!({"reports": 1, "dead_letters": 0})),
        ),
    )
    .fails(body_errors(config, false))
    .fails([Error::InvalidEnvelopes(vec![
        json!({"index": 0, "id": "", "reason": "id must be 1 to 64 bytes"}),
    ])])
    .fails([Error::ShardUnavailable {
        shard: "eu".into(),
        message: "connection refused".into(),
    }]);

    let summary = range_params(
        Operation::new(
            Get,
            "/v1/stats/summary",
            "stats_summary",
            "stats",
            "Totals of a range",
        )
        .secured(&[&[READ_TOKEN]])
        .param(env_param()),
    )
    .answer(200, json_answer("The range's totals", "Summary", None))
    .fails(read_auth_errors())
    .fails(range_errors())
    .fails(shard_read_errors());

    let series = range_params(
        Operation::new(
            Get,
            "/v1/stats/series",
            "stats_series",
            "stats",
            "Zero-filled counts per interval",
        )
        .secured(&[&[READ_TOKEN]])
        .param(env_param()),
    )
    .param(query(
        "event",
        false,
        string(),
        "Only this event name",
        Some(json!("purchase")),
    ))
    .param(query(
        "metric",
        false,
        string(),
        "A metric's values instead of counts (`backend metric add`)",
        None,
    ))
    .param(query(
        "interval",
        false,
        string().enum_values(Some(["second", "minute", "hour", "day"])),
        "Bucket size (default minute); at most 10,000 buckets per request",
        Some(json!("minute")),
    ))
    .answer(200, json_answer("One point per bucket", "Series", None))
    .fails(read_auth_errors())
    .fails(range_errors())
    .fails(shard_read_errors())
    .fails([
        Error::InvalidArgument(
            "interval",
            "\"week\": use second, minute, hour or day".into(),
        ),
        Error::InvalidArgument(
            "range",
            format!(
                "20000 points of one second; at most {} per request",
                crate::stats::MAX_POINTS
            ),
        ),
        Error::InvalidArgument("metric", "\"nope\" is not a metric of shop".into()),
    ]);

    let delivery = range_params(
        Operation::new(
            Get,
            "/v1/stats/delivery",
            "stats_delivery",
            "stats",
            "The delivery ledger of a range",
        )
        .secured(&[&[READ_TOKEN]])
        .param(env_param()),
    )
    .param(query(
        "interval",
        false,
        string().enum_values(Some(["minute"])),
        "`minute`: a series of per-minute ledgers too",
        None,
    ))
    .answer(
        200,
        json_answer(
            "What was received, stored, dropped, lost, in flight",
            "Delivery",
            None,
        ),
    )
    .fails(read_auth_errors())
    .fails(range_errors())
    .fails(shard_read_errors())
    .fails([Error::InvalidArgument(
        "interval",
        "\"hour\": the ledger is kept by minute (interval=minute)".into(),
    )]);

    let sse = |text: &str| {
        typed_answer(
            text,
            "text/event-stream",
            string().description(Some("Server-Sent Events")),
        )
    };
    let stream = Operation::new(Get, "/v1/stats/stream", "stats_stream", "stats", "Live counts (Server-Sent Events)")
        .describe("One `update` event per second: `{id, seconds: [{t, total, by_event, metrics}], health}`; `Last-Event-ID` catches up to 5 minutes.")
        .secured(&[&[READ_TOKEN]])
        .param(env_param())
        .answer(200, sse("The live stream"))
        .fails(read_auth_errors());

    let tail = Operation::new(Get, "/v1/stats/tail", "stats_tail", "stats", "Live tail of stored events and refusals (Server-Sent Events)")
        .describe("`event` items (a stored event, whole), `rejected` items (a sampled refusal), `skipped` and `gap` markers; `Last-Event-ID` resumes.")
        .secured(&[&[READ_TOKEN]])
        .param(env_param())
        .param(query("name", false, string(), "Only events of this name", None))
        .param(query("user", false, string(), "Only events of this user_id or anonymous_id", None))
        .param(query("rejected", false, string(), "`1` (or `true`): refusals only", None))
        .answer(200, sse("The live tail"))
        .fails(read_auth_errors());

    let export = range_params(
        Operation::new(Get, "/v1/export", "export", "export", "An environment's events as NDJSON")
            .describe("One envelope (protocol::Envelope's JSON) per line, by (timestamp, id); gzip with `Accept-Encoding: gzip`. A stream cut short ends without its last line: resume with `after` = the last id read.")
            .secured(&[&[READ_TOKEN]])
            .param(env_param()),
    )
    .param(query("after", false, string().max_length(Some(protocol::MAX_ID_LEN)), "Resume after this envelope id (the last line read)", None))
    .answer(
        200,
        typed_answer(
            "Envelopes, one JSON object per line",
            "application/x-ndjson",
            string().description(Some("lines of Envelope")),
        ),
    )
    .fails(read_auth_errors())
    .fails(range_errors())
    .fails(shard_read_errors());

    let html = |path: &str, id: &str, ct: &str| {
        Operation::new(Get, path, id, "operations", "The dashboard (static asset)")
            .answer(200, typed_answer("The asset", ct, string()))
    };
    vec![
        ingest,
        reports,
        summary,
        series,
        delivery,
        stream,
        tail,
        export,
        health(),
        Operation::new(
            Get,
            "/readyz",
            "readyz",
            "operations",
            "Readiness, with the catalog snapshot's age",
        )
        .answer(
            200,
            json_answer(
                "Serving; `catalog` is `stale` while the catalog cannot be read",
                "Ready",
                None,
            ),
        ),
        Operation::new(
            Get,
            "/metrics",
            "metrics",
            "operations",
            "Prometheus metrics",
        )
        .answer(
            200,
            typed_answer("The text exposition format", "text/plain", string()),
        ),
        Operation::new(
            Get,
            "/openapi.json",
            "openapi",
            "operations",
            "This description",
        )
        .answer(
            200,
            typed_answer("OpenAPI 3.1", "application/json", ObjectBuilder::new()),
        ),
        html("/dashboard", "dashboard", "text/html"),
        html("/dashboard/", "dashboard_slash", "text/html"),
        html("/dashboard/app.js", "dashboard_js", "text/javascript"),
        html("/dashboard/app.css", "dashboard_css", "text/css"),
    ]
}

/// What the body checks of `/v1/ingest` (and its reports) refuse, as `api.rs` does.
fn body_errors(config: &Config, batch: bool) -> Vec<Error> {
    let mut list = vec![
        Error::MissingAuth,
        Error::BadToken,
        Error::UnsupportedContentType("text/plain".into()),
        Error::BodyTooLarge(config.max_body_bytes),
        Error::MalformedJson("EOF while parsing a list at line 1 column 2".into()),
        Error::InvalidBatch("invalid type: map, expected a sequence at line 1 column 0".into()),
    ];
    if batch {
        list.extend([
            Error::UnsupportedEncoding("br".into()),
            Error::BadGzip("invalid gzip header".into()),
            Error::TooManyEnvelopes {
                got: config.max_batch_events + 1,
                max: config.max_batch_events,
            },
            Error::EmptyBatch,
            Error::InvalidEnvelopes(vec![
                json!({"index": 0, "id": "order-1", "reason": "name must not be empty"}),
            ]),
        ]);
    }
    list
}

fn health() -> Operation {
    Operation::new(HttpMethod::Get, "/healthz", "healthz", "health", "Liveness").answer(
        200,
        json_answer("Up", "Health", Some(json!({"status": "ok"}))),
    )
}

/// The public doors (`intake::door::route`), at the edge or the backend.
pub fn public_operations(runtime: Runtime) -> Vec<Operation> {
    use intake::{Door, Error as E};
    let limits = intake::Limits::default();
    let sink_errors = match runtime {
        Runtime::Edge => vec![E::QueueUnavailable],
        Runtime::Backend => vec![E::StoreUnavailable, E::Overloaded { retry_after: 1 }],
    };
    let key_errors = || {
        vec![
            E::MissingKey,
            E::InvalidKey,
            E::RateLimited { retry_after: 10 },
            E::KeyStoreUnavailable,
        ]
    };
    let body_errors = |max_body: usize| {
        vec![
            E::BodyTooLarge(max_body),
            E::IncompleteBody {
                declared: Some(100),
                received: Some(10),
            },
            E::UnsupportedEncoding("br".into()),
            E::BadGzip("invalid gzip header".into()),
            E::InvalidJson("EOF while parsing at line 1 column 1".into()),
        ]
    };
    let early = match runtime {
        Runtime::Edge => {
            "answered before the queue took the events unless `Prefer: wait` (or `?wait=1`)"
        }
        Runtime::Backend => "answered after the events are stored",
    };
    let events_example = json!([{"event": "signup", "id": "signup-1", "user_id": "u1", "properties": {"plan": "free"}}]);
    let events = Operation::new(HttpMethod::Post, "/v1/events", "events", "public", "Send events")
        .describe(&format!(
            "One event, an array, or `{{\"batch\": [...], \"sentAt\": …}}`: all or nothing (422 lists every bad event). \
             At most {} events and {} bytes (after gzip) per request, {} bytes per event. 202 is {early}.",
            limits.max_events, limits.max_body_bytes, limits.max_event_bytes
        ))
        .secured(&[&[API_KEY], &[API_KEY_QUERY]])
        .param(header_param("Prefer", string(), "`wait`: answer only once the events are handed over"))
        .param(query("wait", false, string(), "`1`, `true` or `yes`: like `Prefer: wait` (other values: no wait)", None))
        .param(header_param("Content-Encoding", string().pattern(Some(CONTENT_ENCODING)), "gzip, or none"))
        .body({
            let mut body = json_body(schema_ref("PublicBody"), vec![("two events", events_example.clone())]);
            body.content.insert(
                "text/plain".into(),
                ContentBuilder::new()
                    .schema(Some(schema_ref("PublicBody")))
                    .build(),
            );
            body
        })
        .answer(202, json_answer("Accepted", "Accepted", Some(json!({"accepted": 1}))))
        .fails_at(Door::Events, key_errors())
        .fails_at(Door::Events, [E::UnsupportedMediaType("application/xml".into())])
        .fails_at(Door::Events, body_errors(limits.max_body_bytes))
        .fails_at(Door::Events, [
            E::InvalidBody("body must be an event object, an array of events, or {\"batch\": [...]}".into()),
            E::EmptyBatch,
            E::TooManyEvents(limits.max_events),
            E::EventTooLarge(vec![intake::Detail::new(0, format!("event is 40000 bytes, over the {} byte limit", limits.max_event_bytes))]),
            E::InvalidEvents(vec![intake::Detail::new(0, "`event` is required")]),
        ])
        .fails_at(Door::Events, sink_errors.clone());
    let mut list = vec![events, preflight("/v1/events", "events_preflight")];
    for (path, endpoint) in intake::segment::ENDPOINTS {
        let single = matches!(endpoint, intake::segment::Endpoint::Single(_));
        let id = format!("segment_{}", path.trim_start_matches("/v1/"));
        let (schema, example) = match endpoint {
            intake::segment::Endpoint::Single(t) => {
                (schemas::segment_message(t), segment_example(t))
            }
            intake::segment::Endpoint::Batch => (
                schemas::segment_batch(),
                json!({"batch": [segment_example(protocol::EventType::Track)]}),
            ),
        };
        let summary = match endpoint {
            intake::segment::Endpoint::Single(t) => {
                format!("Segment-compatible {} call", t.as_str())
            }
            intake::segment::Endpoint::Batch => "Segment-compatible batch".to_owned(),
        };
        let mut op = Operation::new(HttpMethod::Post, path, &id, "public", &summary)
            .describe(&format!(
                "The Segment HTTP API's shape. A batch lands its valid messages and lists the rest \
                 (`rejected`, `details`); every client error is 400 (Segment's SDKs drop, not retry, it). \
                 At most {} bytes per request, {} per message. 200 is answered after the events are handed over.",
                intake::segment::MAX_REQUEST_BYTES, intake::segment::MAX_MESSAGE_BYTES
            ))
            .secured(&[&[API_KEY], &[WRITE_KEY_BASIC], &[]])
            .param(header_param("Content-Encoding", string().pattern(Some(CONTENT_ENCODING)), "gzip, or none"))
            .body(json_body(schema.into(), vec![("a message", example)]))
            .answer(200, json_answer("Handed over", "SegmentAccepted", Some(json!({"success": true, "accepted": 1}))))
            .fails_at(Door::Segment, key_errors())
            .fails_at(Door::Segment, body_errors(intake::segment::MAX_REQUEST_BYTES))
            .fails_at(Door::Segment, [
                E::InvalidBody("body must be a JSON object".into()),
                E::InvalidEvents(vec![intake::Detail::new(0, "`event` is required")]),
            ])
            .fails_at(Door::Segment, sink_errors.clone());
        if !single {
            op = op.fails_at(Door::Segment, [E::EmptyBatch]);
        }
        list.push(op);
        list.push(preflight(path, &format!("{id}_preflight")));
    }
    list.push(
        Operation::new(
            HttpMethod::Get,
            "/v1/projects/{writeKey}/settings",
            "segment_settings",
            "public",
            "The browser SDK's settings, pointing back here",
        )
        .param(write_key_param())
        .answer(
            200,
            json_answer("Settings for analytics.js", "SegmentSettings", None),
        )
        .fails_at(Door::Segment, [E::NotFound, E::KeyStoreUnavailable]),
    );
    list.push(
        preflight(
            "/v1/projects/{writeKey}/settings",
            "segment_settings_preflight",
        )
        .param(
            ParameterBuilder::new()
                .name("writeKey")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(string()))
                .description(Some("Any: the preflight does not read it"))
                .build(),
        ),
    );
    list
}

fn write_key_param() -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name("writeKey")
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .schema(Some(
            string()
                .min_length(Some(1))
                .max_length(Some(intake::credentials::MAX_KEY_LEN))
                .pattern(Some("^[!-.0-~]+$")),
        ))
        .description(Some("An active API key (else 404)"))
        .build()
}

fn segment_example(t: protocol::EventType) -> Value {
    use protocol::EventType::*;
    match t {
        Track => {
            json!({"type": "track", "event": "signup", "userId": "u1", "messageId": "m-track-1", "properties": {"plan": "free"}})
        }
        Identify => {
            json!({"type": "identify", "userId": "u1", "messageId": "m-identify-1", "traits": {"email": "u1@example.com"}})
        }
        Page => {
            json!({"type": "page", "name": "Home", "anonymousId": "a1", "messageId": "m-page-1"})
        }
        Screen => {
            json!({"type": "screen", "name": "Home", "anonymousId": "a1", "messageId": "m-screen-1"})
        }
        Group => {
            json!({"type": "group", "userId": "u1", "groupId": "acme", "messageId": "m-group-1"})
        }
        Alias => {
            json!({"type": "alias", "userId": "u1", "previousId": "a1", "messageId": "m-alias-1"})
        }
    }
}

fn preflight(path: &str, id: &str) -> Operation {
    Operation::new(HttpMethod::Options, path, id, "public", "CORS preflight")
        .describe("204; the CORS headers only for an origin SLUICE_ALLOWED_ORIGINS (ALLOWED_ORIGINS at the edge) allows")
        .answer(204, ResponseBuilder::new().description("No content").build())
}

/// `(method, path)` of every described operation, for the route test.
pub fn operations_of(doc: &OpenApi) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        let methods = [
            ("GET", item.get.is_some()),
            ("POST", item.post.is_some()),
            ("PUT", item.put.is_some()),
            ("DELETE", item.delete.is_some()),
            ("PATCH", item.patch.is_some()),
            ("HEAD", item.head.is_some()),
            ("OPTIONS", item.options.is_some()),
        ];
        for (m, present) in methods {
            if present {
                out.push((m.to_owned(), path.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
