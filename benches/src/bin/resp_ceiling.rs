//! `resp_ceiling`: a RESP server answering `+OK` to every command, with no state,
//! for `benches/peers/run.sh` (the resp-* workloads):
//! what a command costs the RESP stack before any dedup work, beside `oncelyd serve
//! --resp-listen` in the same run, as `ceiling` is for HTTP.
//!
//! What it shares with the daemon's RESP face: the allocator (jemalloc), the
//! runtime (`oncelyd::server::runtime`, `--worker-threads` as the daemon's), the
//! parser (`oncelyd::resp::parse`, with the daemon's default limits), one read into
//! a buffer, every complete command in it parsed, every answer written in one
//! write, `TCP_NODELAY`. What it leaves out: the tracker and its group commit,
//! admission, tokens, metrics, timeouts. It answers `CONFIG GET` with an empty
//! array (redis-benchmark asks, and only warns), `PING` with `+PONG`, the rest
//! `+OK`.
//!
//! `resp_ceiling --listen 127.0.0.1:0 [--worker-threads N]` prints `listening on
//! ADDR` once bound, then serves until killed.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use oncelyd::resp::parse::{self, FrameLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// As `oncelyd`'s (see daemon/src/main.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The daemon's default limits: `max_body_bytes` (4 MiB) per bulk string and frame,
/// `max_ids` + 8 arguments.
const LIMITS: FrameLimits = FrameLimits {
    max_bulk: 4 << 20,
    max_args: 10_008,
    max_inline: parse::MAX_INLINE,
    max_frame: 4 << 20,
};

/// Answer every RESP command `+OK`, with the daemon's RESP stack and no tracker.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0: any free port, printed once bound).
    #[arg(long, default_value = "127.0.0.1:6390")]
    listen: SocketAddr,

    /// Worker threads of the runtime, as `oncelyd serve --worker-threads` [default:
    /// one per CPU].
    #[arg(long, value_name = "N")]
    worker_threads: Option<usize>,
}

async fn connection(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = bytes::BytesMut::with_capacity(16 << 10);
    let mut out = Vec::with_capacity(16 << 10);
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 << 10);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut at = 0;
        loop {
            match parse::parse(&buf[at..], &LIMITS) {
                Ok(Some(frame)) => {
                    let name = frame.args.first().map(|r| &buf[at + r.start..at + r.end]);
                    out.extend_from_slice(match name {
                        Some(n) if n.eq_ignore_ascii_case(b"CONFIG") => b"*0\r\n",
                        Some(n) if n.eq_ignore_ascii_case(b"PING") => b"+PONG\r\n",
                        _ => b"+OK\r\n",
                    });
                    at += frame.len;
                }
                Ok(None) => break,
                Err(e) => {
                    out.extend_from_slice(format!("-ERR {e}\r\n").as_bytes());
                    let _ = stream.write_all(&out).await;
                    return;
                }
            }
        }
        let _ = buf.split_to(at);
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    oncely_benches::serve_ceiling(
        "resp_ceiling",
        args.listen,
        args.worker_threads,
        |listener| async move {
            loop {
                let (stream, _) = listener.accept().await?;
                tokio::spawn(connection(stream));
            }
        },
    )
}
