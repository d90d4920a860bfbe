//! The metrics port under a scrape flood: the real metrics server and the real store task on a
//! runtime of their own (two workers, as on a small node), a producer pushing evidence into the
//! store the way attribution does (never waiting: a full channel is counted as
//! `store_channel_full`), [`SCRAPERS`] clients scraping `/metrics` as fast as they are answered
//! from [`SCRAPER_ADDRESSES`] loopback addresses (several pods), and kubelet probing `/healthz`
//! from an address of its own. For [`FLOOD`], no evidence may be lost and every probe must be
//! answered within [`HEALTH_DEADLINE`].
#![cfg(feature = "node-agent")]
#![expect(
    clippy::unwrap_used,
    reason = "test scenarios panic with context; helpers are not #[test] fns"
)]

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;
use triage_agent::{
    attribute::Attributed,
    evidence::fixtures::{dropped, refused, timeout},
    loss::{Counters, Loss},
    metrics::{self, MetricsState},
    store::{self, Store, StoreConfig, StoreHandle},
};

/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(30);
/// Scrapers at once.
const SCRAPERS: usize = 1000;
/// The scrapers' source addresses (127.0.1.1 and on), as if from this many pods.
const SCRAPER_ADDRESSES: u8 = 8;
/// A scraper whose connection was closed (refused, or closed after its age) waits this long
/// before connecting again: about 10,000 attempts a second from the whole flood.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Kubelet's probe: from its own address, this often, answered within this.
const PROBE_FROM: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const PROBE_EVERY: Duration = Duration::from_millis(100);
const HEALTH_DEADLINE: Duration = Duration::from_secs(2);
/// The producer: this many occurrences every tick (5,000 a second), spread over
/// [`NAMESPACES`] namespaces and three kinds, so a scrape has a few thousand series to encode.
const PRODUCER_BATCH: usize = 50;
const PRODUCER_TICK: Duration = Duration::from_millis(10);
const NAMESPACES: usize = 1000;

/// A small HTTP/1.1 exchange on `stream`: the status code and body of one answer to `request`.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> Option<(u16, usize)> {
    stream.write_all(request).await.ok()?;
    buf.clear();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    };
    let head = std::str::from_utf8(buf.get(..head_end)?).ok()?;
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
    Some((status, length))
}

async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

#[derive(Default)]
struct FloodStats {
    scrapes: AtomicU64,
    closed: AtomicU64,
}

/// One scraper: scrapes on a kept-alive connection until it is closed, then connects again.
async fn scraper(from: IpAddr, to: SocketAddr, stop: Arc<AtomicBool>, stats: Arc<FloodStats>) {
    let mut buf = Vec::with_capacity(1 << 20);
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut stream) = connect_from(from, to).await {
            while !stop.load(Ordering::Relaxed) {
                match exchange(
                    &mut stream,
                    b"GET /metrics HTTP/1.1\r\nHost: agent\r\n\r\n",
                    &mut buf,
                )
                .await
                {
                    Some((200, _)) => stats.scrapes.fetch_add(1, Ordering::Relaxed),
                    _ => break,
                };
            }
        }
        stats.closed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// Kubelet: probes `/healthz` on a new connection every [`PROBE_EVERY`] until `stop`; returns
/// the worst latency and the probes that failed or missed the deadline.
fn kubelet(to: SocketAddr, stop: Arc<AtomicBool>) -> (Duration, Vec<String>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut worst = Duration::ZERO;
        let mut failures = Vec::new();
        let mut buf = Vec::new();
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let mut connected = None;
            let probe = async {
                let mut stream = connect_from(PROBE_FROM, to).await.ok()?;
                connected = Some(sent.elapsed());
                exchange(
                    &mut stream,
                    b"GET /healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n",
                    &mut buf,
                )
                .await
            };
            let answer = tokio::time::timeout(HEALTH_DEADLINE, probe).await;
            let took = sent.elapsed();
            worst = worst.max(took);
            match answer {
                Ok(Some((200, _))) => {}
                other => failures.push(format!(
                    "at {:?}: {other:?} after {took:?} (connected after {connected:?})",
                    started.elapsed()
                )),
            }
            tokio::time::sleep(PROBE_EVERY.saturating_sub(took)).await;
        }
        (worst, failures)
    })
}

/// The producer: attribution's way of handing occurrences to the store (`try_send`, a full
/// channel counted as lost). Returns how many it handed over.
async fn producer(
    tx: mpsc::Sender<Attributed>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut tick = tokio::time::interval(PRODUCER_TICK);
    let mut sent = 0u64;
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        for _ in 0..PRODUCER_BATCH {
            let ns = format!("ns-{}", i % NAMESPACES);
            let pod = format!("pod-{}", i % NAMESPACES);
            let builder = match (i / NAMESPACES) % 3 {
                0 => refused(),
                1 => timeout(),
                _ => dropped(),
            };
            let occurrence = builder
                .pod(&ns, &pod)
                .at_time(SystemTime::now())
                .occurrence();
            i += 1;
            match tx.try_send(Attributed::Occurrence(occurrence)) {
                Ok(()) => sent += 1,
                Err(_) => counters.add(Loss::StoreChannelFull, 1),
            }
        }
    }
    sent
}

struct Agent {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    store: StoreHandle,
    occurrences: mpsc::Sender<Attributed>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
}

/// The store task and the metrics server on a two-worker runtime of their own.
fn start_agent() -> Agent {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("agent")
        .enable_all()
        .build()
        .unwrap();
    let cancel = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let (store, occurrences, addr) = rt.block_on(async {
        let (store, occurrences, task) = store::spawn(
            Store::new(
                StoreConfig::new("node-a", store::DEFAULT_CAPACITY, Duration::from_secs(3600)),
                counters.clone(),
            ),
            cancel.clone(),
        );
        tokio::spawn(task);
        let state = MetricsState {
            agent: triage_agent::api::fixtures::agent_state(
                "node-a",
                store.clone(),
                counters.clone(),
            ),
            program_ids: Arc::new(vec![]),
            otlp: None,
            grpc_connections: None,
        };
        let listener = metrics::http::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(metrics::serve(state, listener, cancel.clone()));
        (store, occurrences, addr)
    });
    Agent {
        rt,
        addr,
        store,
        occurrences,
        counters,
        cancel,
    }
}

#[test]
fn a_scrape_flood_loses_no_evidence_and_liveness_keeps_its_deadline() {
    let agent = start_agent();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    let producer = agent.rt.spawn(producer(
        agent.occurrences.clone(),
        agent.counters.clone(),
        stop.clone(),
    ));

    let flood_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("flood")
        .enable_all()
        .build()
        .unwrap();
    let stats = Arc::new(FloodStats::default());
    let scrapers: Vec<_> = (0..SCRAPERS)
        .map(|i| {
            let from = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + (i as u8 % SCRAPER_ADDRESSES)));
            flood_rt.spawn(scraper(from, agent.addr, stop.clone(), stats.clone()))
        })
        .collect();
    let kubelet = std::thread::spawn({
        let stop = stop.clone();
        let addr = agent.addr;
        move || kubelet(addr, stop)
    });

    std::thread::sleep(FLOOD);
    stop.store(true, Ordering::Relaxed);
    let (worst_probe, failed_probes) = kubelet.join().unwrap();
    let sent = agent.rt.block_on(producer).unwrap();
    flood_rt.block_on(async {
        for s in scrapers {
            let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
        }
    });
    flood_rt.shutdown_background();

    // Everything handed to the store is counted in it once it has drained its channel.
    let recorded = agent.rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = agent.store.stats().await.unwrap();
            let recorded: u64 = stats.occurrences.iter().map(|(_, _, n)| n).sum();
            if recorded >= sent || Instant::now() > deadline {
                break recorded;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let scrapes = stats.scrapes.load(Ordering::Relaxed);
    let closed = stats.closed.load(Ordering::Relaxed);
    let losses: Vec<_> = Loss::ALL
        .iter()
        .map(|l| (l.as_str(), agent.counters.get(*l)))
        .filter(|(_, n)| *n > 0)
        .collect();
    eprintln!(
        "flood of {FLOOD:?}: {sent} occurrences sent, {recorded} recorded, {scrapes} scrapes \
         answered, {closed} scraper connections closed, worst probe {worst_probe:?}, \
         {} failed probes, losses {losses:?}, {:?} in all",
        failed_probes.len(),
        started.elapsed()
    );
    assert!(
        losses.is_empty(),
        "evidence lost during the flood: {losses:?}"
    );
    assert_eq!(
        recorded, sent,
        "every occurrence handed over is in the store"
    );
    assert!(
        failed_probes.is_empty(),
        "liveness probes failed or missed {HEALTH_DEADLINE:?}: {failed_probes:?}"
    );
    assert!(worst_probe < HEALTH_DEADLINE, "{worst_probe:?}");
    assert!(scrapes > 0, "the flood was answered");

    // The bound engaged, and says so in the metrics.
    let text = agent.rt.block_on(async {
        let mut stream = connect_from(PROBE_FROM, agent.addr).await.unwrap();
        let mut buf = Vec::new();
        let (status, _) = exchange(
            &mut stream,
            b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n",
            &mut buf,
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
        String::from_utf8(buf).unwrap()
    });
    let refused: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("triage_agent_connections_refused_total{listener=\"metrics\"} ")
        })
        .expect("the refused connections are a metric")
        .parse()
        .unwrap();
    assert!(refused > 0, "the flood met the connection bound");
    agent.cancel.cancel();
}
