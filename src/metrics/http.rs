//! The `/metrics` listener: one path, one method, no HTTP framework. Each connection is
//! bounded in time (`TIMEOUT` to send its request) and size (`MAX_REQUEST` bytes of head),
//! answered once and closed; at most `MAX_CONNECTIONS` at once (beyond, a new one waits
//! in the kernel's backlog). An address outside `metrics.allow` gets 403 before anything
//! is computed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::net::dial::IpRange;

pub const MAX_REQUEST: usize = 8 * 1024;
pub const TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_CONNECTIONS: usize = 16;

/// What answers a scrape (the engine's exposition).
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serve scrapes on `listener` until `stop`.
pub async fn serve(listener: TcpListener, allow: Arc<[IpRange]>, render: Render, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = (tokio::select! {
            _ = stop.cancelled() => return,
            p = slots.clone().acquire_owned() => p,
        }) else {
            return;
        };
        let (sock, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (allow, render) = (allow.clone(), render.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if tokio::time::timeout(TIMEOUT, answer(sock, peer, &allow, &render)).await.is_err() {
                tracing::debug!("metrics: {peer} sent no request within {}s", TIMEOUT.as_secs());
            }
        });
    }
}

/// The answer to one request head.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Metrics,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Judge a request head (the bytes up to the blank line) from `peer`.
pub fn judge(head: &[u8], peer: SocketAddr, allow: &[IpRange]) -> Answer {
    if !allow.iter().any(|r| r.contains(peer.ip().to_canonical())) {
        return Answer::Forbidden;
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else { return Answer::BadRequest };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return Answer::BadRequest;
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return Answer::NotFound;
    }
    if method != "GET" && method != "HEAD" {
        return Answer::MethodNotAllowed;
    }
    Answer::Metrics
}

async fn answer(mut sock: TcpStream, peer: SocketAddr, allow: &[IpRange], render: &Render) {
    // A refused address is told so at once, without reading its request.
    let mut head = Vec::with_capacity(512);
    if allow.iter().any(|r| r.contains(peer.ip().to_canonical())) {
        let mut buf = [0u8; 1024];
        loop {
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                break;
            }
            if head.len() >= MAX_REQUEST {
                return respond(&mut sock, "431 Request Header Fields Too Large", "text/plain", b"request head too large\n").await;
            }
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    }
    let is_head = head.starts_with(b"HEAD ");
    match judge(&head, peer, allow) {
        Answer::Metrics => {
            let body = render();
            let body = if is_head { Vec::new() } else { body.into_bytes() };
            respond(&mut sock, "200 OK", super::CONTENT_TYPE, &body).await
        }
        Answer::Forbidden => {
            tracing::debug!("metrics: {peer} is not in metrics.allow");
            respond(&mut sock, "403 Forbidden", "text/plain", b"not in metrics.allow\n").await
        }
        Answer::NotFound => respond(&mut sock, "404 Not Found", "text/plain", b"only /metrics is served here\n").await,
        Answer::MethodNotAllowed => respond(&mut sock, "405 Method Not Allowed", "text/plain", b"GET /metrics\n").await,
        Answer::BadRequest => respond(&mut sock, "400 Bad Request", "text/plain", b"not an HTTP/1 request\n").await,
    }
}

async fn respond(sock: &mut TcpStream, status: &str, content_type: &str, body: &[u8]) {
    let allow = if status.starts_with("405") { "Allow: GET, HEAD\r\n" } else { "" };
    let head =
        format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n", body.len());
    let _ = sock.write_all(head.as_bytes()).await;
    let _ = sock.write_all(body).await;
    let _ = sock.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_from_an_allowed_address() {
        let allow = [IpRange::parse("127.0.0.1/32").unwrap(), IpRange::parse("::1/128").unwrap()];
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let v6: SocketAddr = "[::ffff:127.0.0.1]:4000".parse().unwrap();
        let other: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        assert_eq!(judge(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", local, &allow), Answer::Metrics);
        assert_eq!(judge(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", v6, &allow), Answer::Metrics, "a mapped address is its IPv4 one");
        assert_eq!(judge(b"GET /metrics HTTP/1.1\r\n\r\n", other, &allow), Answer::Forbidden);
        assert_eq!(judge(b"GET / HTTP/1.1\r\n\r\n", local, &allow), Answer::NotFound);
        assert_eq!(judge(b"POST /metrics HTTP/1.1\r\n\r\n", local, &allow), Answer::MethodNotAllowed);
        assert_eq!(judge(b"\x16\x03\x01garbage", local, &allow), Answer::BadRequest);
    }
}
