//! Downloading images over http(s) for the synchronous ingest.
//!
//! A small tokio runtime lives inside [`Fetcher`] so that callers stay synchronous. A batch of URLs is fetched
//! with at most `concurrency` requests in flight; each request is retried with exponential backoff when the
//! failure may be transient (timeouts, connection errors, 429 and 5xx) and never when the answer is final (other
//! 4xx, a body over the byte cap). Results come back in input order.

use std::error::Error as _;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Client, StatusCode, Url};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

use super::reject::{ImageReject, RejectCode};

/// Default byte cap for one image, downloaded or read from disk: far above any sensible training image, far below
/// what would hurt a worker holding a batch of them in memory.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// How downloads behave; the defaults suit fetching dataset images from public web servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchConfig {
    /// Requests in flight at once, across all hosts.
    pub concurrency: usize,
    /// Limit for establishing a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Limit for one whole attempt, from connecting to the last body byte.
    pub request_timeout: Duration,
    /// Further attempts after the first one fails transiently.
    pub retries: u32,
    /// Wait before the first retry; doubles for each later one.
    pub backoff_base: Duration,
    /// Upper bound on any wait between attempts, including one asked for with Retry-After.
    pub backoff_max: Duration,
    /// Largest body accepted, checked against Content-Length and again while reading.
    pub max_bytes: u64,
    pub user_agent: String,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            concurrency: 16,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            retries: 3,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(15),
            max_bytes: DEFAULT_MAX_BYTES,
            user_agent: concat!("umrank/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// Why a [`Fetcher`] could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FetcherError {
    #[error("fetch concurrency must be at least 1")]
    ZeroConcurrency,
    #[error("cannot start the runtime for downloads: {0}")]
    Runtime(#[source] io::Error),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Downloads batches of URLs; reuse one for many batches to keep connections alive between them.
pub struct Fetcher {
    runtime: Runtime,
    client: Client,
    config: Arc<FetchConfig>,
}

impl Fetcher {
    pub fn new(config: FetchConfig) -> Result<Self, FetcherError> {
        if config.concurrency == 0 {
            return Err(FetcherError::ZeroConcurrency);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(FetcherError::Runtime)?;
        let client = Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(config.user_agent.clone())
            .build()
            .map_err(FetcherError::Client)?;
        Ok(Fetcher {
            runtime,
            client,
            config: Arc::new(config),
        })
    }

    /// Fetches every URL, returning the bodies (or why not) in input order. Reject details give the cause and the
    /// number of attempts; the caller knows the URL and adds it.
    ///
    /// Blocks the calling thread; must not be called from inside an async runtime.
    pub fn fetch_all(&self, urls: &[Url]) -> Vec<Result<Vec<u8>, ImageReject>> {
        self.runtime.block_on(async {
            let slots = Arc::new(Semaphore::new(self.config.concurrency));
            let tasks: Vec<_> = urls
                .iter()
                .map(|url| {
                    let job = fetch_with_retries(
                        self.client.clone(),
                        Arc::clone(&slots),
                        Arc::clone(&self.config),
                        url.clone(),
                    );
                    tokio::spawn(job)
                })
                .collect();
            let mut bodies = Vec::with_capacity(tasks.len());
            for task in tasks {
                bodies.push(task.await.unwrap_or_else(|err| {
                    Err(ImageReject::new(
                        RejectCode::FetchFailed,
                        format!("download task failed: {err}"),
                    ))
                }));
            }
            bodies
        })
    }
}

/// One failed attempt, and whether another may succeed.
struct Failure {
    reject: ImageReject,
    transient: bool,
    /// The server's own Retry-After, when it gave one in seconds.
    retry_after: Option<Duration>,
}

impl Failure {
    fn fatal(code: RejectCode, detail: String) -> Self {
        Failure {
            reject: ImageReject::new(code, detail),
            transient: false,
            retry_after: None,
        }
    }
}

async fn fetch_with_retries(
    client: Client,
    slots: Arc<Semaphore>,
    config: Arc<FetchConfig>,
    url: Url,
) -> Result<Vec<u8>, ImageReject> {
    let mut attempt = 0;
    loop {
        // A slot is held per attempt, not across the backoff: a URL waiting to retry must not block others.
        let outcome = match slots.acquire().await {
            Ok(_slot) => fetch_once(&client, &url, config.max_bytes).await,
            Err(closed) => Err(Failure::fatal(
                RejectCode::FetchFailed,
                format!("download slots closed: {closed}"),
            )),
        };
        match outcome {
            Ok(body) => return Ok(body),
            Err(failure) if failure.transient && attempt < config.retries => {
                tokio::time::sleep(backoff(&config, &url, attempt, failure.retry_after)).await;
                attempt += 1;
            }
            Err(failure) => {
                let attempts = attempt + 1;
                let noun = if attempts == 1 { "attempt" } else { "attempts" };
                return Err(ImageReject::new(
                    failure.reject.code,
                    format!("{} ({attempts} {noun})", failure.reject.detail),
                ));
            }
        }
    }
}

async fn fetch_once(client: &Client, url: &Url, max_bytes: u64) -> Result<Vec<u8>, Failure> {
    let mut response = client
        .get(url.clone())
        .send()
        .await
        .map_err(transport_failure)?;
    let status = response.status();
    if !status.is_success() {
        return Err(Failure {
            reject: ImageReject::new(RejectCode::HttpStatus, format!("HTTP {status}")),
            transient: status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error(),
            retry_after: retry_after(response.headers()),
        });
    }
    let declared = response.content_length();
    if let Some(length) = declared.filter(|&length| length > max_bytes) {
        return Err(Failure::fatal(
            RejectCode::TooManyBytes,
            format!("Content-Length {length} is over the cap of {max_bytes} bytes"),
        ));
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(max_bytes) as usize);
    while let Some(chunk) = response.chunk().await.map_err(transport_failure)? {
        if (body.len() + chunk.len()) as u64 > max_bytes {
            // Returning drops the response, which closes the connection instead of draining the rest.
            return Err(Failure::fatal(
                RejectCode::TooManyBytes,
                format!("body exceeds the cap of {max_bytes} bytes; stopped reading"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn transport_failure(err: reqwest::Error) -> Failure {
    // A redirect loop or a request that cannot be built fails the same way every time.
    let transient = !err.is_builder() && !err.is_redirect();
    let code = if err.is_timeout() {
        RejectCode::Timeout
    } else if err.is_builder() {
        RejectCode::BadReference
    } else {
        RejectCode::FetchFailed
    };
    Failure {
        reject: ImageReject::new(code, error_chain(&err.without_url())),
        transient,
        retry_after: None,
    }
}

/// reqwest's own message names only the request; the cause (refused, reset, timed out) is in the source chain.
fn error_chain(err: &reqwest::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// Exponential backoff with deterministic jitter: the wait for retry `attempt` is base * 2^attempt, capped, then
/// scaled into [50%, 100%] by a hash of the URL and attempt, so that many URLs failing together (one server
/// restarting) do not retry in lockstep, while a rerun waits exactly as long as the last one. A server's
/// Retry-After is honoured up to the cap.
fn backoff(
    config: &FetchConfig,
    url: &Url,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let exponential = config
        .backoff_base
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(config.backoff_max);
    let jittered = exponential.mul_f64(0.5 + 0.5 * unit_hash(url.as_str(), attempt));
    match retry_after {
        Some(asked) => asked.min(config.backoff_max).max(jittered),
        None => jittered,
    }
}

/// FNV-1a of the URL and attempt, mapped to [0, 1).
fn unit_hash(text: &str, attempt: u32) -> f64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = text
        .bytes()
        .chain(attempt.to_le_bytes())
        .fold(OFFSET, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        });
    (hash >> 11) as f64 / (1u64 << 53) as f64
}
