//! `--metrics-addr` against a real Prometheus (Debian's, installed by setup): it
//! scrapes pdm every second inside the client's namespace while UDP requests are
//! answered after a known processing time; its HTTP API must then give the server
//! delay's median in the bucket of that time, packet totals equal to pdm's own NDJSON,
//! and the target up. promtool checks the exposition itself.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, UdpSocket},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use common::{ADDR_A, ADDR_B, Netns, Pdm, TwoHosts, last_flow, traffic::sock};
use serde_json::Value;

const PORT: u16 = 7900;
const METRICS: &str = "[::1]:9464";
const PROMETHEUS: &str = "[::1]:9090";
/// The server's processing time: inside the (2 ms, 5 ms] bucket.
const HOLD: Duration = Duration::from_millis(3);

/// A Prometheus in a namespace, killed on drop.
struct Prometheus {
    child: Child,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(ns: &Netns) -> Self {
        let dir = std::env::temp_dir().join(format!("pdm-prom-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: pdm\n    static_configs:\n      - targets: ['{METRICS}']\n"
            ),
        )
        .expect("config");
        let child = ns
            .cmd("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).expect("log"))
            .spawn()
            .expect("start prometheus (setup installs it)");
        let p = Self { child, dir };
        // Ready, and its target scraped once (static targets reach the scraper a few
        // seconds after start).
        let deadline = Instant::now() + Duration::from_secs(30);
        while !p.target_up(ns) {
            assert!(
                Instant::now() < deadline,
                "prometheus has not scraped pdm after 30 s: {}",
                std::fs::read_to_string(p.dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn target_up(&self, ns: &Netns) -> bool {
        let (status, body) = get(ns, PROMETHEUS, "/api/v1/targets");
        status == 200
            && serde_json::from_str::<Value>(&body)
                .is_ok_and(|t| t["data"]["activeTargets"][0]["health"] == "up")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET path` from `addr` inside `ns`: (status, body); status 0 when nothing answers.
fn get(ns: &Netns, addr: &str, path: &str) -> (u16, String) {
    let (addr, path) = (addr.to_owned(), path.to_owned());
    ns.in_ns(move || {
        let Ok(mut s) = TcpStream::connect(&addr) else {
            return (0, String::new());
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return (0, String::new());
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map_or("", |b| b.1).to_owned();
        (status, body)
    })
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The value of an instant PromQL query with one result (None: no result).
fn query(ns: &Netns, q: &str) -> Option<f64> {
    let (status, body) = get(
        ns,
        PROMETHEUS,
        &format!("/api/v1/query?query={}", encode(q)),
    );
    assert_eq!(status, 200, "{q}: {body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let r = v["data"]["result"].as_array().expect("result");
    assert!(r.len() <= 1, "{q}: one series expected: {body}");
    r.first().map(|s| {
        s["value"][1]
            .as_str()
            .expect("value")
            .parse()
            .expect("number")
    })
}

#[test]
fn a_real_prometheus_scrapes_what_pdm_measured() {
    let h = TwoHosts::new("prom");
    let pdm_a = Pdm::start(&h.a, &["--metrics-addr", METRICS, "--interval", "200ms"]);
    let pdm_b = Pdm::start(&h.b, &["--interval", "200ms"]);
    let prometheus = Prometheus::start(&h.a);

    // Requests answered after HOLD.
    const N: usize = 40;
    let server = h.b.in_ns(|| {
        let u = UdpSocket::bind(sock(ADDR_B, PORT)).expect("bind");
        u.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        u
    });
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = [0u8; 1500];
            for _ in 0..N {
                let Ok((n, from)) = server.recv_from(&mut buf) else {
                    return;
                };
                std::thread::sleep(HOLD);
                server.send_to(&buf[..n], from).expect("answer");
            }
        });
        h.a.in_ns(|| {
            let u = UdpSocket::bind(sock(ADDR_A, 0)).expect("bind");
            u.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            let mut buf = [0u8; 1500];
            for i in 0..N {
                u.send_to(format!("request {i}").as_bytes(), sock(ADDR_B, PORT))
                    .expect("send");
                u.recv_from(&mut buf).expect("answer");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    });
    // pdm refreshes every 200 ms and Prometheus scrapes every second: wait for a
    // scrape of the final counts.
    std::thread::sleep(Duration::from_millis(2500));

    let (status, exposition) = get(&h.a, METRICS, "/metrics");
    assert_eq!(status, 200, "{exposition}");
    let checked =
        h.a.cmd("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin
                    .take()
                    .expect("stdin")
                    .write_all(exposition.as_bytes())?;
                c.wait_with_output()
            })
            .expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let (status, targets) = get(&h.a, PROMETHEUS, "/api/v1/targets");
    assert_eq!(status, 200);
    let t: Value = serde_json::from_str(&targets).expect("JSON");
    assert_eq!(
        t["data"]["activeTargets"][0]["health"], "up",
        "the scrape target: {targets}"
    );

    let median = query(
        &h.a,
        r#"histogram_quantile(0.5, sum by (le) (pdm_server_delay_seconds_bucket{proto="udp"}))"#,
    )
    .expect("a server-delay median");
    eprintln!(
        "Prometheus: server delay p50 {:.3} ms (held {HOLD:?})",
        median * 1e3
    );
    assert!(
        (0.002..=0.005).contains(&median),
        "the median in the bucket of {HOLD:?}: {median}"
    );
    let samples =
        query(&h.a, r#"sum(pdm_server_delay_seconds_count{proto="udp"})"#).expect("a count");
    let packets = |dir: &str| {
        query(
            &h.a,
            &format!(r#"sum(pdm_packets_total{{proto="udp",direction="{dir}"}})"#),
        )
        .expect("packets")
    };
    let (tx, rx) = (packets("tx"), packets("rx"));

    let lines = pdm_a.stop();
    drop(pdm_b);
    drop(prometheus);
    let f = last_flow(&lines, "udp", Some(PORT));
    assert_eq!(
        samples,
        f["server_delay_all_samples"].as_u64().expect("samples") as f64,
        "every sample in the histogram: {f}"
    );
    // Queried before pdm stopped, with no traffic since: its last NDJSON report has the
    // same totals.
    assert_eq!(tx, f["tx_packets"].as_u64().expect("tx") as f64, "{f}");
    assert_eq!(rx, f["rx_packets"].as_u64().expect("rx") as f64, "{f}");
    assert_eq!(tx, N as f64, "one request each");
}
