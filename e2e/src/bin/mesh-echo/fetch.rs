//! `mesh-echo fetch URL`: one GET, the body printed on stdout, a non-zero exit status on a
//! non-2xx answer or a transport error (for scripts on machines without curl).

use std::time::Duration;

use http::HeaderMap;

use crate::client::{HttpClient, Target, Version};

#[derive(clap::Args)]
pub struct Args {
    /// URL to GET (http:// only). The Host header comes from the URL.
    url: String,
    /// Speak HTTP/2 with prior knowledge instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// Connect to this address (`host:port`) instead of the URL's host.
    #[arg(long)]
    via: Option<String>,
    /// Give up after this long (e.g. `500ms`, `10s`).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let target = Target::parse(&args.url, args.via.as_deref())?;
    let version = if args.http2 {
        Version::Http2
    } else {
        Version::Http1
    };
    let client = HttpClient::new(target, version);
    let deadline = tokio::time::Instant::now() + args.timeout;
    let answer = client
        .get(&HeaderMap::new(), deadline)
        .await
        .map_err(|f| anyhow::anyhow!("{f}"))?;
    print!("{}", String::from_utf8_lossy(&answer.body));
    anyhow::ensure!(
        answer.status.is_success(),
        "{} answered {}",
        args.url,
        answer.status
    );
    Ok(())
}
