//! `mesh-echo load URL`: a bounded open-loop load generator over HTTP/1.1, HTTP/2 or gRPC.
//!
//! Request i starts at `start + i/rate` as its own task, so a slow answer does not delay the
//! schedule; at most `--concurrency` requests are in flight (a request due while all slots
//! are taken waits for one, and is counted as `queued`). Each request gets `--timeout` from
//! the moment it has a slot (connecting included). The whole run ends at the latest
//! `requests/rate + timeout + 1s` after the start; whatever has not finished by then fails
//! with kind `timeout`. Latency percentiles cover every request that finished before the
//! end of the run, failures and per-request timeouts included (from the moment it had a slot
//! to the end of the body or the failure). Memory is bounded by the number of requests (one
//! latency each).
//!
//! Output is the plain summary line `sent=N ok=N failed=N replicas: a=1 b=2` or, with
//! `--json`, one JSON line with statuses, error kinds, replicas and latency percentiles.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::client::{self, Failure, HttpClient, Target};
use crate::grpc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// HTTP/1.1 over a pool of keep-alive connections.
    Http1,
    /// HTTP/2 with prior knowledge over one multiplexed connection.
    Http2,
    /// gRPC `mesh.echo.v1.Echo/Echo` over a tonic channel.
    Grpc,
}

#[derive(clap::Args)]
pub struct Args {
    /// URL to request (http:// only). The Host header / `:authority` comes from the URL; for
    /// gRPC the message is the URL's path and `?delay_ms=`/`?code=` fill those fields.
    url: String,
    /// How to speak to the server.
    #[arg(long, value_enum, default_value_t = Protocol::Http1)]
    protocol: Protocol,
    /// Requests to send (bounded).
    #[arg(long, default_value_t = 100)]
    requests: u64,
    /// Requests per second (the schedule; the run is open loop).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Most requests in flight at once; later ones wait for a slot.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Time allowed for each request (e.g. `500ms`, `5s`), from the moment it has a slot.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Header (gRPC: metadata) added to every request, `NAME:VALUE` (repeatable).
    #[arg(long = "header", value_name = "NAME:VALUE", value_parser = client::parse_header)]
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Connect to this address (`host:port`) instead of the URL's host (e.g. a proxy's
    /// outbound port); the URL's authority is still sent.
    #[arg(long)]
    via: Option<String>,
    /// Print one line per finished request.
    #[arg(long)]
    verbose: bool,
    /// Print one JSON line instead of the summary, and exit 0 whatever the outcome.
    #[arg(long)]
    json: bool,
}

/// What one request came to.
struct Outcome {
    /// From the slot to the end of the body (or to the failure, timeouts included); `None`
    /// when the run ended before the request could even get a slot.
    latency: Option<Duration>,
    result: Result<Answer, Failure>,
}

/// An answer from the server (or a proxy): HTTP status or gRPC code.
struct Answer {
    /// `"200"`, `"503"`, `"grpc-0"`, `"grpc-14"`...
    key: String,
    ok: bool,
    replica: Option<String>,
    /// For `--verbose`: the first line of an HTTP body, the gRPC message.
    note: String,
}

/// How requests are sent.
enum Sender {
    Http(HttpClient),
    Grpc(tonic::transport::Channel, grpc::pb::EchoRequest),
}

struct Job {
    sender: Sender,
    headers: http::HeaderMap,
    timeout: Duration,
    what: String,
    slots: Semaphore,
    queued: AtomicU64,
}

impl Job {
    async fn one(&self) -> Outcome {
        let _slot = match self.slots.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
                match self.slots.acquire().await {
                    Ok(p) => p,
                    Err(_) => {
                        return Outcome {
                            latency: None,
                            result: Err(Failure::timeout("the run ended".into())),
                        }
                    }
                }
            }
        };
        let sent = Instant::now();
        let deadline = sent + self.timeout;
        let result = match &self.sender {
            Sender::Http(c) => c.get(&self.headers, deadline).await.map(|a| {
                let text = String::from_utf8_lossy(&a.body);
                Answer {
                    key: a.status.as_u16().to_string(),
                    ok: a.status.is_success(),
                    replica: a.replica,
                    note: text.lines().next().unwrap_or("").to_string(),
                }
            }),
            Sender::Grpc(channel, request) => {
                let call = grpc::call(channel.clone(), request.clone(), &self.headers, &self.what);
                match tokio::time::timeout_at(deadline, call).await {
                    Err(_) => Err(Failure::timeout(format!("{} timed out", self.what))),
                    Ok(r) => r.map(|a| Answer {
                        key: format!("grpc-{}", a.code as i32),
                        ok: a.code == tonic::Code::Ok,
                        replica: a.replica,
                        note: match a.reply {
                            Ok(reply) => format!("message={}", reply.message),
                            Err(status) => status.message().to_string(),
                        },
                    }),
                }
            }
        };
        Outcome {
            latency: Some(sent.elapsed()),
            result,
        }
    }
}

/// The counts of a run.
#[derive(Default)]
struct Summary {
    finished: u64,
    ok: u64,
    failed: u64,
    statuses: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    /// Every answer's replica, `?` when it named none (the plain line's view).
    replicas: BTreeMap<String, u64>,
    latencies_ms: Vec<f64>,
}

impl Summary {
    fn add(&mut self, o: Outcome, verbose: bool) {
        self.finished += 1;
        if let Some(l) = o.latency {
            self.latencies_ms.push(l.as_secs_f64() * 1000.0);
        }
        match o.result {
            Ok(a) => {
                if a.ok {
                    self.ok += 1;
                } else {
                    self.failed += 1;
                }
                *self.statuses.entry(a.key.clone()).or_default() += 1;
                let replica = a.replica.unwrap_or_else(|| "?".into());
                if verbose {
                    println!("{} {} {}", a.key, replica, a.note);
                }
                *self.replicas.entry(replica).or_default() += 1;
            }
            Err(f) => {
                self.failed += 1;
                *self.statuses.entry("error".into()).or_default() += 1;
                if verbose {
                    println!("error {}: {}", f.kind, f.detail);
                }
                *self.errors.entry(f.kind).or_default() += 1;
            }
        }
    }

    /// Requests that had not finished when the run ended.
    fn add_unfinished(&mut self, n: u64) {
        if n > 0 {
            self.failed += n;
            *self.statuses.entry("error".into()).or_default() += n;
            *self.errors.entry("timeout".into()).or_default() += n;
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be a positive number, got {}",
        args.rate
    );
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(!args.timeout.is_zero(), "--timeout must be more than 0");
    let target = Target::parse(&args.url, args.via.as_deref())?;
    let (sender, what) = match args.protocol {
        Protocol::Http1 | Protocol::Http2 => {
            let version = if args.protocol == Protocol::Http1 {
                client::Version::Http1
            } else {
                client::Version::Http2
            };
            let what = target.describe("GET");
            (Sender::Http(HttpClient::new(target.clone(), version)), what)
        }
        Protocol::Grpc => {
            let channel = grpc::channel(&target)?;
            let what = target.describe("gRPC Echo.Echo to");
            (Sender::Grpc(channel, grpc::request_for(&target)), what)
        }
    };
    let job = Arc::new(Job {
        sender,
        headers: client::header_map(&args.headers),
        timeout: args.timeout,
        what,
        slots: Semaphore::new(args.concurrency.min(Semaphore::MAX_PERMITS)),
        queued: AtomicU64::new(0),
    });

    let requests = args.requests;
    let rate = args.rate;
    let start = Instant::now();
    let schedule = Duration::try_from_secs_f64(requests as f64 / rate).unwrap_or(Duration::MAX);
    let deadline = start
        .checked_add(
            schedule
                .saturating_add(args.timeout)
                .saturating_add(Duration::from_secs(1)),
        )
        .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 24 * 3600));

    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let scheduler = {
        let job = job.clone();
        tokio::spawn(async move {
            for i in 0..requests {
                let due = Duration::try_from_secs_f64(i as f64 / rate).unwrap_or(Duration::MAX);
                match start.checked_add(due) {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => return,
                }
                let job = job.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let outcome = job.one().await;
                    let _ = tx.send(outcome);
                });
            }
        })
    };

    let mut summary = Summary::default();
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    while summary.finished < requests {
        tokio::select! {
            o = rx.recv() => match o {
                Some(o) => summary.add(o, args.verbose),
                None => break,
            },
            _ = &mut sleep => break,
        }
    }
    scheduler.abort();
    let elapsed = start.elapsed();
    summary.add_unfinished(requests - summary.finished);

    if args.json {
        println!(
            "{}",
            json_line(
                &summary,
                requests,
                job.queued.load(Ordering::Relaxed),
                elapsed
            )
        );
        // The caller reads the numbers; leave without waiting for unfinished requests.
        std::process::exit(0);
    }
    let spread: Vec<String> = summary
        .replicas
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "sent={requests} ok={} failed={} replicas: {}",
        summary.ok,
        summary.failed,
        spread.join(" ")
    );
    std::process::exit(if summary.failed > 0 { 1 } else { 0 });
}

fn json_line(s: &Summary, sent: u64, queued: u64, elapsed: Duration) -> String {
    let mut lat = s.latencies_ms.clone();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let rank = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len());
        round3(lat[rank - 1])
    };
    let named: BTreeMap<&String, &u64> = s.replicas.iter().filter(|(k, _)| *k != "?").collect();
    serde_json::json!({
        "sent": sent,
        "ok": s.ok,
        "failed": s.failed,
        "statuses": s.statuses,
        "errors": s.errors,
        "replicas": named,
        "latency_ms": {
            "p50": pct(0.50),
            "p90": pct(0.90),
            "p99": pct(0.99),
            "max": lat.last().copied().map_or(0.0, round3),
        },
        "queued": queued,
        "elapsed_s": round3(elapsed.as_secs_f64()),
    })
    .to_string()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
