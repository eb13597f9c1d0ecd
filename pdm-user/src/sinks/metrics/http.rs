//! The HTTP side of `--metrics-addr`: `GET /metrics` on the run's tokio runtime, one
//! request per connection. The exposition is OpenMetrics when the scraper's Accept
//! header asks for it (Prometheus does), else the Prometheus text format. The request
//! head is bounded (8 KiB, 5 s): the port may be reachable by anyone the operator let
//! in, and a slow or oversized request must cost nothing.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::Exporter;

const MAX_HEAD: usize = 8 << 10;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, exporter: Exporter) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors and the like: try again shortly rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let exporter = exporter.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(READ_TIMEOUT * 2, answer(stream, &exporter)).await;
        });
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    Metrics { openmetrics: bool },
    Index,
    NotFound,
    BadMethod,
    Bad,
}

fn parse(head: &[u8]) -> Option<Ask> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(Ask::Bad),
    }
    if !matches!(req.method, Some("GET" | "HEAD")) {
        return Some(Ask::BadMethod);
    }
    let path = req.path.unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    Some(match path {
        "/metrics" => Ask::Metrics {
            openmetrics: req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("accept")
                    && String::from_utf8_lossy(h.value).contains("application/openmetrics-text")
            }),
        },
        "/" => Ask::Index,
        _ => Ask::NotFound,
    })
}

async fn answer(mut stream: TcpStream, exporter: &Exporter) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let ask = loop {
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(ask) = parse(&head) {
            break ask;
        }
        if head.len() > MAX_HEAD {
            break Ask::Bad;
        }
    };
    let (status, kind, body) = match ask {
        Ask::Metrics { openmetrics } => (
            "200 OK",
            if openmetrics {
                OPENMETRICS
            } else {
                PROMETHEUS_TEXT
            },
            exporter.render(openmetrics),
        ),
        Ask::Index => (
            "200 OK",
            "text/plain; charset=utf-8",
            "pdm: metrics at /metrics\n".to_owned(),
        ),
        Ask::NotFound => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".into(),
        ),
        Ask::BadMethod => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
        Ask::Bad => ("400 Bad Request", "text/plain", "bad request\n".into()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_for_what_they_ask() {
        let get = |path: &str, accept: &str| {
            parse(format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n").as_bytes())
        };
        assert_eq!(
            get(
                "/metrics",
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            ),
            Some(Ask::Metrics { openmetrics: true })
        );
        assert_eq!(
            get("/metrics", "*/*"),
            Some(Ask::Metrics { openmetrics: false })
        );
        assert_eq!(
            get("/metrics?x=1", "*/*"),
            Some(Ask::Metrics { openmetrics: false })
        );
        assert_eq!(get("/nope", "*/*"), Some(Ask::NotFound));
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost"),
            None,
            "not all there yet"
        );
        assert_eq!(
            parse(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Ask::BadMethod)
        );
        assert_eq!(parse(b"\x00\x01garbage\r\n\r\n"), Some(Ask::Bad));
    }
}
