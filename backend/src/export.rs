//! Export: an environment's stored events of a time range as NDJSON, one
//! whole envelope per line (the shape `POST /v1/ingest` takes back), in
//! (event time, key) order, read from its primary shard a window of rows
//! per query and streamed a page at a time — `GET /v1/export` and
//! `backend export` both run [`Export`].
//!
//! Resumable: `after=<id of the last line received>` maps the id to its
//! stored key (`protocol::event_key`, the key the row was written under) and
//! the row's event time, and continues right after that (time, key), so
//! equal timestamps neither repeat nor skip rows.

use std::{io::Write as _, sync::Arc};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{header, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
};

use crate::query::Query;
use futures::{Stream, StreamExt};
use serde::Deserialize;

use crate::{
    error::{Error, Result},
    model::Shard,
    stats::{self, ReadAuth},
    store::{ExportPage, ExportPosition, ExportStore, ExportWindow},
    AppState,
};

/// Rows per page: what bounds the export's memory (a page being read, one
/// being written, and at most [`PAGES_AHEAD`] queued between them).
pub const PAGE_ROWS: u32 = 2000;
/// Rows per query: its rows are read as they come, a page at a time, so
/// this bounds only how long one query runs (and holds its connection).
pub const WINDOW_ROWS: u32 = 50_000;
/// Pages read ahead of the writer, so the shard's read and the encoding overlap.
const PAGES_AHEAD: usize = 2;

/// One export: where it reads, and the position it has reached.
pub struct Export {
    store: Arc<dyn ExportStore>,
    shard: Shard,
    env_id: u32,
    to: i64,
    position: ExportPosition,
    window: ExportWindow,
}

impl Export {
    /// The events of `env_id` with `from <= timestamp < to` (ms), after the
    /// event whose exported id is `after` when given (it must be stored:
    /// else `InvalidArgument("after")`).
    pub async fn new(
        store: Arc<dyn ExportStore>,
        shard: Shard,
        env_id: u32,
        (from, to): (i64, i64),
        after: Option<&str>,
    ) -> Result<Self> {
        let start = ExportPosition {
            ts: from,
            key: None,
        };
        let position = match after {
            None => start,
            Some(id) => {
                let key = protocol::event_key(id);
                let ts = store
                    .event_time(&shard, env_id, key)
                    .await?
                    .ok_or_else(|| {
                        Error::InvalidArgument(
                            "after",
                            format!("{id:?} is the id of no stored event of this environment"),
                        )
                    })?;
                // A cursor from before the range resumes at its start.
                if ts < from {
                    start
                } else {
                    ExportPosition { ts, key: Some(key) }
                }
            }
        };
        Ok(Self {
            store,
            shard,
            env_id,
            to,
            position,
            window: ExportWindow {
                rows: WINDOW_ROWS,
                page_rows: PAGE_ROWS,
            },
        })
    }

    /// Pages of this many rows instead of [`PAGE_ROWS`] (tests).
    pub fn with_page_rows(mut self, rows: u32) -> Self {
        self.window.page_rows = rows.max(1);
        self
    }

    /// Queries of this many rows instead of [`WINDOW_ROWS`] (tests).
    pub fn with_window_rows(mut self, rows: u32) -> Self {
        self.window.rows = rows.max(1);
        self
    }

    /// The NDJSON, a page of lines per chunk. The first page is read before
    /// this returns, so a shard that cannot be read at the start is an
    /// error here (a status, over HTTP). A read failing later ends the
    /// stream with [`Error::ExportInterrupted`] naming the last line's id,
    /// after only whole lines; it is logged. Windows are read back to back
    /// by a task of their own, their pages up to [`PAGES_AHEAD`] ahead, and
    /// decoded and encoded by the stream's reader, so the shard's work and
    /// the backend's overlap.
    pub async fn ndjson(mut self) -> Result<impl Stream<Item = Result<Bytes>> + Send + 'static> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<ExportPage>>(PAGES_AHEAD);
        let (env_id, shard) = (self.env_id, self.shard.name.clone());
        tokio::spawn(async move {
            loop {
                let read = self
                    .store
                    .export_window(
                        &self.shard,
                        self.env_id,
                        (self.position, self.to),
                        self.window,
                        &tx,
                    )
                    .await;
                match read {
                    Ok(read) => {
                        if let Some(last) = read.last {
                            self.position = last;
                        }
                        if read.rows < u64::from(self.window.rows) || tx.is_closed() {
                            return; // the end, or the reader went away
                        }
                    }
                    Err(error) => {
                        let _ = tx.send(Err(error)).await;
                        return;
                    }
                }
            }
        });
        let first = match rx.recv().await {
            Some(Err(error)) => return Err(error),
            first => first,
        };
        let pages =
            futures::stream::iter(first).chain(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut last_id = String::new();
        let mut lines = 0u64;
        let chunks = pages.map(move |page| {
            let rows = page.as_ref().map_or(0, |p| p.rows as u64);
            let encoded = page.and_then(ExportPage::lines).map_err(|error| {
                tracing::warn!(env_id, %shard, lines, after = %last_id, %error, "export stopped early");
                Error::ExportInterrupted {
                    after: last_id.clone(),
                    message: error.to_string(),
                }
            })?;
            lines += rows;
            if let Some(id) = encoded.last_id {
                last_id = id;
            }
            Ok(Bytes::from(encoded.ndjson))
        });
        Ok(chunks)
    }
}

/// The stream gzipped: one gzip member, flushed after every chunk, its
/// trailer only after the last, so a stream that ends early is a truncated
/// gzip of whole lines.
pub fn gzip(
    chunks: impl Stream<Item = Result<Bytes>> + Send + 'static,
) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    futures::stream::unfold(
        (Box::pin(chunks), Some(encoder)),
        |(mut chunks, mut encoder)| async move {
            let gz = encoder.as_mut()?;
            let gzip_error = |e: std::io::Error| Error::Internal(format!("gzip: {e}"));
            let item = match chunks.next().await {
                // Flushed per chunk, so what a client got inflates to whole lines.
                Some(Ok(chunk)) => gz
                    .write_all(&chunk)
                    .and_then(|()| gz.flush())
                    .map(|()| Bytes::from(std::mem::take(gz.get_mut())))
                    .map_err(gzip_error),
                Some(Err(error)) => {
                    encoder = None;
                    Err(error)
                }
                None => encoder
                    .take()
                    .map(|gz| gz.finish().map(Bytes::from).map_err(gzip_error))?,
            };
            Some((item, (chunks, encoder)))
        },
    )
}

#[derive(Debug, Deserialize)]
pub struct ExportParams {
    pub from: Option<String>,
    pub to: Option<String>,
    pub after: Option<String>,
}

/// Whether `Accept-Encoding` lists gzip (without `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip")) && !refused
        })
}

/// `GET /v1/export?env=&from=&to=[&after=ID]` (read token): NDJSON,
/// gzipped when `Accept-Encoding` has gzip.
pub async fn export(
    State(state): State<AppState>,
    auth: ReadAuth,
    headers: HeaderMap,
    Query(params): Query<ExportParams>,
) -> Result<Response> {
    let range = stats::range(&stats::RangeParams {
        from: params.from,
        to: params.to,
        event: None,
        metric: None,
        interval: None,
    })?;
    let shard = stats::primary_shard(&state, &auth.env)?;
    let export = Export::new(
        state.export_store.clone(),
        shard,
        auth.env.id,
        range,
        params.after.as_deref(),
    )
    .await?;
    let lines = export.ndjson().await?;
    let mut response = if accepts_gzip(&headers) {
        let mut response = Body::from_stream(gzip(lines)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        response
    } else {
        Body::from_stream(lines).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    Ok(response)
}
