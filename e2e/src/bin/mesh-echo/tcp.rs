//! A server-speaks-first TCP line protocol, the kind a proxy cannot detect by reading first:
//! on accept the server writes `hello from NAME\n` before reading anything, then answers each
//! line with `NAME echo: LINE\n` and closes on EOF. [`serve`] is the server (`serve
//! --tcp-listen`), [`run`] the `mesh-echo tcp HOST:PORT` client.

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Longest line read at once; a longer one is answered in pieces.
const MAX_LINE: u64 = 64 * 1024;

/// How long the client waits for the connection and for each line.
const CLIENT_WAIT: Duration = Duration::from_secs(5);

/// Accepts connections on `listener` forever, greeting each as replica `name`.
pub async fn serve(listener: TcpListener, name: String) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tcp accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let name = name.clone();
        tokio::spawn(async move {
            if let Err(e) = converse(stream, &name).await {
                eprintln!("tcp connection from {peer}: {e}");
            }
        });
    }
}

async fn converse(stream: TcpStream, name: &str) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("hello from {name}\n").as_bytes())
        .await?;
    let mut read = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut read)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        write
            .write_all(format!("{name} echo: {text}\n").as_bytes())
            .await?;
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Server to connect to, `host:port` (resolved with the system resolver).
    addr: String,
    /// The line to send after the greeting.
    #[arg(long, default_value = "ping")]
    send: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let addr = &args.addr;
    let stream = crate::client::connect(addr, Some(tokio::time::Instant::now() + CLIENT_WAIT))
        .await
        .map_err(|f| anyhow::anyhow!("{f}"))?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let greeting = read_line(&mut read, addr, "the greeting").await?;
    println!("{greeting}");
    write
        .write_all(format!("{}\n", args.send).as_bytes())
        .await
        .with_context(|| format!("cannot send to {addr}"))?;
    let answer = read_line(&mut read, addr, "the answer").await?;
    println!("{answer}");
    Ok(())
}

/// One line (without its newline) within [`CLIENT_WAIT`]; EOF and silence are errors.
async fn read_line(
    read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    addr: &str,
    what: &str,
) -> anyhow::Result<String> {
    let mut line = Vec::new();
    let n = tokio::time::timeout(
        CLIENT_WAIT,
        read.take(MAX_LINE).read_until(b'\n', &mut line),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{addr} sent no line ({what}) within {CLIENT_WAIT:?}"))?
    .with_context(|| format!("cannot read {what} from {addr}"))?;
    anyhow::ensure!(n > 0, "{addr} closed the connection before sending {what}");
    let text = String::from_utf8_lossy(&line);
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}
