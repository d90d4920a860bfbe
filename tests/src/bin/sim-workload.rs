//! The process that runs inside simulated pods: `sleep` (the pod's pause process), `listen PORT`
//! (a server), `accept-unread PORT DELAY_MS` (a server that closes each connection DELAY_MS
//! after accepting it, unread, so the kernel resets it), `connect-hold IP:PORT` (one connection
//! that sends a byte and reads until it ends; prints `connected`, then `reset` or `closed`),
//! `connect IP:PORT COUNT INTERVAL_MS [TIMEOUT_MS]` (a client that reports each
//! outcome), `tcp-sweep IP FROM TO` (a connect scan of the ports FROM..=TO; prints `refused N
//! other M`), `connect-rate IP:PORT SECONDS` (whole connections to a listener, as fast as
//! possible; prints connections, seconds, failures), `udp IP:PORT COUNT` (COUNT datagrams from one socket, paced so the sender's own
//! queues never drop any), `resolve NAME COUNT INTERVAL_MS` (glibc getaddrinfo with the pod's
//! resolv.conf), `dns-upstream PORT RCODE DELAY_MS` (an upstream resolver answering every query
//! with RCODE after DELAY_MS), `dns-flood IP:PORT COUNT NAME [WAIT_MS]` (COUNT queries with distinct ids; with WAIT_MS it reads answers that long at most before it exits), `dns-load IP:PORT SECONDS NAME
//! WINDOW` (WINDOW queries in flight for SECONDS; prints answered and seconds), `udp-echo PORT`
//! (sends every datagram back), `udp-rr IP:PORT SECONDS WINDOW` (WINDOW 64-byte requests in
//! flight to a `udp-echo` for SECONDS; prints responses and seconds),
//! `hold-connects IPV4:PORT COUNT SECONDS` (COUNT connects left waiting for SECONDS),
//! `spoof-udp SRC DST PORT COUNT` (datagrams from a raw socket with any source address),
//! `alloc MIB` (allocates and holds memory), `alloc-child MIB` (a worker child allocates while
//! the first process stays), `spin SECONDS` (a busy loop), `as NAME COMMAND...` (COMMAND under
//! the process name NAME), `deep-cgroup BASE DEPTH COMMAND...` (COMMAND in a cgroup DEPTH levels
//! of 255-byte names below BASE, a path longer than PATH_MAX; removed afterwards). Standard library only, so it starts
//! in a millisecond.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    time::Duration,
};

/// Allocates and touches `mib` MiB, then holds it (until the OOM killer comes).
fn alloc(mib: usize) {
    let mut held: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mib {
        // Touch every page so it is resident, not just reserved.
        held.push(vec![1u8; 1 << 20]);
    }
    println!("allocated {mib}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
        std::hint::black_box(&held);
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&words)
}

/// Runs `rest` inside a chain of `depth` new cgroups below `base`, each named with 255 bytes
/// (the longest a name can be), so the process's cgroup path is longer than PATH_MAX; then
/// moves back to `base` and removes the chain. Prints the added path length first.
fn deep_cgroup(base: &str, depth: &str, rest: &[&str]) -> ExitCode {
    let Ok(depth) = depth.parse::<usize>() else {
        eprintln!("sim-workload: usage: deep-cgroup BASE DEPTH COMMAND...");
        return ExitCode::FAILURE;
    };
    let name = |i: usize| format!("{i:x}{}", "d".repeat(255 - format!("{i:x}").len()));
    let Ok(mut back) = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("{base}/cgroup.procs"))
    else {
        eprintln!("sim-workload: cannot open {base}/cgroup.procs");
        return ExitCode::FAILURE;
    };
    // Relative steps: the whole path is too long for one system call.
    let mut made = 0;
    let mut ok = std::env::set_current_dir(base).is_ok();
    while ok && made < depth {
        ok = std::fs::create_dir(name(made)).is_ok()
            && std::env::set_current_dir(name(made)).is_ok();
        made += usize::from(ok);
    }
    let pid = std::process::id().to_string();
    let code = if ok && std::fs::write("cgroup.procs", &pid).is_ok() {
        // (/proc/self/cgroup cannot tell: it stops at PATH_MAX.)
        println!("cgroup path {} bytes below the container", made * 256);
        run(rest)
    } else {
        eprintln!("sim-workload: could not make and enter {depth} nested cgroups under {base}");
        ExitCode::FAILURE
    };
    // The chain outlives the command by two seconds: the DaemonSet's agent (no
    // CAP_DAC_READ_SEARCH) names a cgroup by walking the tree when an event needs it, and a
    // cgroup already removed by then is attributed by IP. This tool tests names and lengths,
    // not that race.
    std::thread::sleep(Duration::from_secs(2));
    let _ = std::io::Write::write_all(&mut back, pid.as_bytes());
    for i in (0..made).rev() {
        let _ = std::env::set_current_dir("..");
        let _ = std::fs::remove_dir(name(i));
    }
    code
}

fn run(words: &[&str]) -> ExitCode {
    match words {
        // The process's name (comm, 15 bytes at most) as the kernel reports it, then COMMAND.
        ["as", name, rest @ ..] => {
            if std::fs::write("/proc/thread-self/comm", name).is_err() {
                eprintln!("sim-workload: cannot set the process name");
                return ExitCode::FAILURE;
            }
            run(rest)
        }
        ["deep-cgroup", base, depth, rest @ ..] => deep_cgroup(base, depth, rest),
        ["sleep"] => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        ["listen", port] => {
            let Ok(listener) = TcpListener::bind(format!("0.0.0.0:{port}")) else {
                eprintln!("sim-workload: cannot listen on port {port}");
                return ExitCode::FAILURE;
            };
            for conn in listener.incoming() {
                drop(conn);
            }
            ExitCode::SUCCESS
        }
        ["connect", addr, count, interval_ms, rest @ ..] if rest.len() <= 1 => {
            let timeout = rest.first().map_or(Ok(2000), |t| t.parse::<u64>());
            let (Ok(addr), Ok(count), Ok(interval), Ok(timeout)) = (
                addr.parse::<SocketAddr>(),
                count.parse::<u32>(),
                interval_ms.parse::<u64>(),
                timeout,
            ) else {
                eprintln!("sim-workload: usage: connect IP:PORT COUNT INTERVAL_MS [TIMEOUT_MS]");
                return ExitCode::FAILURE;
            };
            for _ in 0..count {
                match TcpStream::connect_timeout(&addr, Duration::from_millis(timeout)) {
                    Ok(_) => println!("connected"),
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => println!("refused"),
                    Err(e) if e.kind() == ErrorKind::TimedOut => println!("timeout"),
                    Err(e) => println!("error {e}"),
                }
                std::thread::sleep(Duration::from_millis(interval));
            }
            ExitCode::SUCCESS
        }
        ["accept-unread", port, delay_ms] => {
            // Accepts connections, and closes each DELAY_MS later without reading what the
            // peer sent: the kernel answers unread data with a reset.
            let (Ok(listener), Ok(delay)) = (
                TcpListener::bind(format!("0.0.0.0:{port}")),
                delay_ms.parse::<u64>(),
            ) else {
                eprintln!("sim-workload: usage: accept-unread PORT DELAY_MS");
                return ExitCode::FAILURE;
            };
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(delay));
                    drop(conn);
                });
            }
            ExitCode::SUCCESS
        }
        ["connect-hold", addr] => {
            // One connection (waiting up to 30 s for an answer), one byte sent, then read
            // until the connection ends: prints `connected`, then `reset` or `closed`.
            let Ok(addr) = addr.parse::<SocketAddr>() else {
                eprintln!("sim-workload: usage: connect-hold IP:PORT");
                return ExitCode::FAILURE;
            };
            let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(30)) {
                Ok(s) => s,
                Err(e) => {
                    println!("error {e}");
                    return ExitCode::SUCCESS;
                }
            };
            println!("connected");
            let _ = std::io::Write::flush(&mut std::io::stdout());
            let _ = std::io::Write::write_all(&mut s, b"x");
            let mut buf = [0u8; 64];
            loop {
                match std::io::Read::read(&mut s, &mut buf) {
                    Ok(0) => break println!("closed"),
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => break println!("reset"),
                    Err(e) => break println!("error {e}"),
                }
            }
            ExitCode::SUCCESS
        }
        ["flood-udp", addr, seconds] | ["flood-connect", addr, seconds] => {
            let (Ok(addr), Ok(seconds)) = (addr.parse::<SocketAddr>(), seconds.parse::<f64>())
            else {
                eprintln!("sim-workload: usage: flood-udp|flood-connect IP:PORT SECONDS");
                return ExitCode::FAILURE;
            };
            let until = std::time::Instant::now() + Duration::from_secs_f64(seconds);
            let started = std::time::Instant::now();
            let mut n = 0u64;
            if words.first() == Some(&"flood-udp") {
                let Ok(socket) = std::net::UdpSocket::bind("0.0.0.0:0") else {
                    return ExitCode::FAILURE;
                };
                while std::time::Instant::now() < until {
                    for _ in 0..64 {
                        if socket.send_to(b"flood", addr).is_ok() {
                            n += 1;
                        }
                    }
                }
            } else {
                while std::time::Instant::now() < until {
                    let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
                    n += 1;
                }
            }
            println!("{n} {}", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        ["hold-connects", addr, count, seconds] => {
            // COUNT connection attempts left waiting for an answer that never comes (the
            // destination drops SYNs), held SECONDS, then closed.
            let (Ok(addr), Ok(count), Ok(seconds)) = (
                addr.parse::<std::net::SocketAddrV4>(),
                count.parse::<usize>(),
                seconds.parse::<f64>(),
            ) else {
                eprintln!("sim-workload: usage: hold-connects IPV4:PORT COUNT SECONDS");
                return ExitCode::FAILURE;
            };
            match hold_connects(addr, count) {
                Ok(held) => {
                    println!("holding {}", held.len());
                    std::thread::sleep(Duration::from_secs_f64(seconds));
                    drop(held);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sim-workload: hold-connects: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        ["spoof-udp", src, dst, port, count] => {
            // COUNT UDP datagrams written whole on a raw socket (CAP_NET_RAW), with SRC as their
            // source address, whoever SRC is.
            let (Ok(src), Ok(dst), Ok(port), Ok(count)) = (
                src.parse::<std::net::Ipv4Addr>(),
                dst.parse::<std::net::Ipv4Addr>(),
                port.parse::<u16>(),
                count.parse::<u32>(),
            ) else {
                eprintln!("sim-workload: usage: spoof-udp SRC_IPV4 DST_IPV4 PORT COUNT");
                return ExitCode::FAILURE;
            };
            match spoof_udp(src, dst, port, count) {
                Ok(sent) => {
                    println!("sent {sent}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sim-workload: spoof-udp: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        ["connect-rate", addr, seconds] => {
            // Whole connections to a listener: connect, wait for the server's close, close.
            // The server closing first keeps TIME_WAIT on its side, so the client's ports are
            // never exhausted and every counted connection is a real one.
            let (Ok(addr), Ok(seconds)) = (addr.parse::<SocketAddr>(), seconds.parse::<f64>())
            else {
                eprintln!("sim-workload: usage: connect-rate IP:PORT SECONDS");
                return ExitCode::FAILURE;
            };
            let started = std::time::Instant::now();
            let until = started + Duration::from_secs_f64(seconds);
            let (mut n, mut failed) = (0u64, 0u64);
            while std::time::Instant::now() < until {
                match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                    Ok(mut s) => {
                        let mut buf = [0u8; 16];
                        let _ = std::io::Read::read(&mut s, &mut buf);
                        n += 1;
                    }
                    Err(_) => failed += 1,
                }
            }
            println!("{n} {} {failed}", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        ["udp-sweep", ip, from, to, ..] if words.len() <= 6 => {
            let rounds = words.get(4).map_or(Ok(1), |r| r.parse::<u32>());
            let burst = words.get(5).map_or(Ok(1), |r| r.parse::<u32>());
            let (Ok(ip), Ok(from), Ok(to), Ok(rounds), Ok(burst)) = (
                ip.parse::<std::net::IpAddr>(),
                from.parse::<u16>(),
                to.parse::<u16>(),
                rounds,
                burst,
            ) else {
                eprintln!("sim-workload: usage: udp-sweep IP FROM_PORT TO_PORT [ROUNDS [BURST]]");
                return ExitCode::FAILURE;
            };
            let Ok(socket) = std::net::UdpSocket::bind("0.0.0.0:0") else {
                return ExitCode::FAILURE;
            };
            let mut sent = 0u32;
            for _ in 0..rounds {
                for port in from..=to {
                    for _ in 0..burst {
                        if socket.send_to(b"sweep", SocketAddr::new(ip, port)).is_ok() {
                            sent += 1;
                        }
                        if sent % 100 == 99 {
                            std::thread::sleep(Duration::from_micros(500));
                        }
                    }
                }
            }
            println!("sent {sent}");
            ExitCode::SUCCESS
        }
        ["tcp-sweep", ip, from, to] => {
            let (Ok(ip), Ok(from), Ok(to)) = (
                ip.parse::<std::net::IpAddr>(),
                from.parse::<u16>(),
                to.parse::<u16>(),
            ) else {
                eprintln!("sim-workload: usage: tcp-sweep IP FROM_PORT TO_PORT");
                return ExitCode::FAILURE;
            };
            // A connect scan, one port after another: prints how each ended, in totals.
            let (mut refused, mut other) = (0u32, 0u32);
            for port in from..=to {
                match TcpStream::connect_timeout(
                    &SocketAddr::new(ip, port),
                    Duration::from_millis(2000),
                ) {
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => refused += 1,
                    _ => other += 1,
                }
            }
            println!("refused {refused} other {other}");
            ExitCode::SUCCESS
        }
        ["udp", addr, count] => {
            let (Ok(addr), Ok(count)) = (addr.parse::<SocketAddr>(), count.parse::<u32>()) else {
                eprintln!("sim-workload: usage: udp IP:PORT COUNT");
                return ExitCode::FAILURE;
            };
            let Ok(socket) = std::net::UdpSocket::bind("0.0.0.0:0") else {
                eprintln!("sim-workload: cannot bind a UDP socket");
                return ExitCode::FAILURE;
            };
            let mut sent = 0u32;
            for i in 0..count {
                if socket.send_to(b"triage-agent test datagram", addr).is_ok() {
                    sent += 1;
                }
                // The receive backlog of a veth is 1000 packets: stay far below it.
                if i % 100 == 99 {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            println!("sent {sent}");
            ExitCode::SUCCESS
        }
        ["resolve", name, count, interval_ms] => {
            let (Ok(count), Ok(interval)) = (count.parse::<u32>(), interval_ms.parse::<u64>())
            else {
                eprintln!("sim-workload: usage: resolve NAME COUNT INTERVAL_MS");
                return ExitCode::FAILURE;
            };
            // getaddrinfo(3): glibc's resolver, reading the pod's /etc/resolv.conf.
            for _ in 0..count {
                match std::net::ToSocketAddrs::to_socket_addrs(&(*name, 0)) {
                    Ok(addrs) => println!("ok {}", addrs.count()),
                    Err(e) => println!("fail {e}"),
                }
                std::thread::sleep(Duration::from_millis(interval));
            }
            ExitCode::SUCCESS
        }
        ["dns-upstream", port, rcode, delay_ms] => {
            let (Ok(port), Ok(rcode), Ok(delay)) = (
                port.parse::<u16>(),
                rcode.parse::<u8>(),
                delay_ms.parse::<u64>(),
            ) else {
                eprintln!("sim-workload: usage: dns-upstream PORT RCODE DELAY_MS");
                return ExitCode::FAILURE;
            };
            let Ok(socket) = std::net::UdpSocket::bind(("0.0.0.0", port)) else {
                eprintln!("sim-workload: cannot bind UDP port {port}");
                return ExitCode::FAILURE;
            };
            let socket = std::sync::Arc::new(socket);
            let mut buf = [0u8; 1500];
            // Answers each query with its own question, no records: only header bits change
            // (QR, RA, rcode), so nothing here parses DNS.
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let Some(query) = buf.get(..n).filter(|q| q.len() >= 12) else {
                    continue;
                };
                let mut answer = query.to_vec();
                if let Some([flags, codes]) = answer.get_mut(2..4) {
                    *flags |= 0x80;
                    *codes = 0x80 | (rcode & 0x0f);
                }
                let socket = socket.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(delay));
                    let _ = socket.send_to(&answer, from);
                });
            }
            ExitCode::SUCCESS
        }
        ["dns-load", addr, seconds, name, window] => {
            // WINDOW queries kept in flight, a new one for each answer.
            let (Ok(addr), Ok(seconds), Ok(window)) = (
                addr.parse::<SocketAddr>(),
                seconds.parse::<f64>(),
                window.parse::<u16>(),
            ) else {
                eprintln!("sim-workload: usage: dns-load IP:PORT SECONDS NAME WINDOW");
                return ExitCode::FAILURE;
            };
            let Ok(socket) = std::net::UdpSocket::bind("0.0.0.0:0") else {
                return ExitCode::FAILURE;
            };
            let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
            let mut query = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            for label in name.split('.').filter(|l| !l.is_empty()) {
                query.push(label.len() as u8);
                query.extend_from_slice(label.as_bytes());
            }
            query.extend_from_slice(&[0, 0, 1, 0, 1]);
            let mut next_id = 0u16;
            let mut send = |socket: &std::net::UdpSocket| {
                next_id = next_id.wrapping_add(1);
                if let Some(q) = query.get_mut(..2) {
                    q.copy_from_slice(&next_id.to_be_bytes());
                }
                let _ = socket.send_to(&query, addr);
            };
            let started = std::time::Instant::now();
            let until = started + Duration::from_secs_f64(seconds);
            for _ in 0..window {
                send(&socket);
            }
            let mut answered = 0u64;
            let mut buf = [0u8; 1500];
            while std::time::Instant::now() < until {
                match socket.recv(&mut buf) {
                    Ok(n) if n >= 12 => {
                        answered += 1;
                        send(&socket);
                    }
                    Ok(_) => {}
                    // A lost query: refill the window.
                    Err(_) => {
                        for _ in 0..window {
                            send(&socket);
                        }
                    }
                }
            }
            println!("{answered} {}", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        ["udp-echo", port] => {
            // Sends every datagram back at once, from one thread (a small request/response
            // server: the per-packet cost of a hook shows most here).
            let Ok(port) = port.parse::<u16>() else {
                eprintln!("sim-workload: usage: udp-echo PORT");
                return ExitCode::FAILURE;
            };
            let Ok(socket) = std::net::UdpSocket::bind(("0.0.0.0", port)) else {
                eprintln!("sim-workload: cannot bind UDP port {port}");
                return ExitCode::FAILURE;
            };
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(buf.get(..n).unwrap_or_default(), from);
            }
            ExitCode::SUCCESS
        }
        ["udp-rr", addr, seconds, window] => {
            // WINDOW 64-byte requests kept in flight to a `udp-echo`, a new one for each
            // response; prints responses and seconds.
            let (Ok(addr), Ok(seconds), Ok(window)) = (
                addr.parse::<SocketAddr>(),
                seconds.parse::<f64>(),
                window.parse::<u16>(),
            ) else {
                eprintln!("sim-workload: usage: udp-rr IP:PORT SECONDS WINDOW");
                return ExitCode::FAILURE;
            };
            let Ok(socket) = std::net::UdpSocket::bind("0.0.0.0:0") else {
                return ExitCode::FAILURE;
            };
            if socket.connect(addr).is_err() {
                return ExitCode::FAILURE;
            }
            let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
            let request = [0x5au8; 64];
            let started = std::time::Instant::now();
            let until = started + Duration::from_secs_f64(seconds);
            for _ in 0..window {
                let _ = socket.send(&request);
            }
            let mut answered = 0u64;
            let mut buf = [0u8; 1500];
            while std::time::Instant::now() < until {
                match socket.recv(&mut buf) {
                    Ok(_) => {
                        answered += 1;
                        let _ = socket.send(&request);
                    }
                    // A lost request: refill the window.
                    Err(_) => {
                        for _ in 0..window {
                            let _ = socket.send(&request);
                        }
                    }
                }
            }
            println!("{answered} {}", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        ["dns-flood", addr, count, name, rest @ ..] if rest.len() <= 1 => {
            let (Ok(addr), Ok(count)) = (addr.parse::<SocketAddr>(), count.parse::<u32>()) else {
                eprintln!("sim-workload: usage: dns-flood IP:PORT COUNT NAME [WAIT_MS]");
                return ExitCode::FAILURE;
            };
            // WAIT_MS: the socket stays open for the answers that long at most (without it the
            // process exits once it has sent, and late answers find no socket).
            let Ok(wait_ms) = rest.first().map_or(Ok(0), |w| w.parse::<u64>()) else {
                eprintln!("sim-workload: usage: dns-flood IP:PORT COUNT NAME [WAIT_MS]");
                return ExitCode::FAILURE;
            };
            let Ok(socket) = std::net::UdpSocket::bind("0.0.0.0:0") else {
                return ExitCode::FAILURE;
            };
            let mut query = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            for label in name.split('.').filter(|l| !l.is_empty()) {
                query.push(label.len() as u8);
                query.extend_from_slice(label.as_bytes());
            }
            query.extend_from_slice(&[0, 0, 1, 0, 1]);
            let mut sent = 0u32;
            for i in 0..count {
                if let Some(id) = query.get_mut(..2) {
                    id.copy_from_slice(&(i as u16).to_be_bytes());
                }
                if socket.send_to(&query, addr).is_ok() {
                    sent += 1;
                }
                if i % 100 == 99 {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            let deadline = std::time::Instant::now() + Duration::from_millis(wait_ms);
            let mut answers = 0u32;
            let mut buf = [0u8; 512];
            while answers < sent {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
                    break;
                }
                match socket.recv(&mut buf) {
                    Ok(_) => answers += 1,
                    Err(_) => break,
                }
            }
            println!("sent {sent}");
            ExitCode::SUCCESS
        }
        ["alloc", mib] => {
            let Ok(mib) = mib.parse::<usize>() else {
                eprintln!("sim-workload: usage: alloc MIB");
                return ExitCode::FAILURE;
            };
            alloc(mib);
            ExitCode::SUCCESS
        }
        ["alloc-child", mib] => {
            // The first process stays; a worker child allocates (and is the one OOM-killed).
            let Ok(me) = std::env::current_exe() else {
                return ExitCode::FAILURE;
            };
            let Ok(mut child) = std::process::Command::new(me).args(["alloc", mib]).spawn() else {
                eprintln!("sim-workload: cannot start the child");
                return ExitCode::FAILURE;
            };
            println!("child {}", child.id());
            let _ = child.wait();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        ["spin", seconds] => {
            let Ok(seconds) = seconds.parse::<f64>() else {
                eprintln!("sim-workload: usage: spin SECONDS");
                return ExitCode::FAILURE;
            };
            let until = std::time::Instant::now() + Duration::from_secs_f64(seconds);
            let mut x = 0u64;
            while std::time::Instant::now() < until {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "sim-workload: usage: sleep | listen PORT | connect IP:PORT COUNT INTERVAL_MS [TIMEOUT_MS] | udp IP:PORT COUNT | resolve NAME COUNT INTERVAL_MS | dns-upstream PORT RCODE DELAY_MS | dns-flood IP:PORT COUNT NAME | dns-load IP:PORT SECONDS NAME WINDOW | alloc MIB | alloc-child MIB | spin SECONDS | as NAME COMMAND... | deep-cgroup BASE DEPTH COMMAND..."
            );
            ExitCode::FAILURE
        }
    }
}

/// Starts `count` non-blocking connects to `addr` (the open-files limit raised to fit them).
fn hold_connects(
    addr: std::net::SocketAddrV4,
    count: usize,
) -> std::io::Result<Vec<std::os::fd::OwnedFd>> {
    use std::os::fd::FromRawFd;
    let wanted = (count + 64) as libc::rlim_t;
    let limit = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: wanted,
    };
    // SAFETY: a plain struct passed by pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        // SAFETY: plain system calls; the descriptor is owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor nobody else owns.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: sin is a valid sockaddr_in for its size.
        let rc = unsafe {
            libc::connect(
                fd,
                (&sin as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        let err = std::io::Error::last_os_error();
        if rc != 0 && err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
        held.push(owned);
    }
    Ok(held)
}

/// Sends `count` UDP datagrams from `src` (any address) to `dst:port` on a raw socket.
fn spoof_udp(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    port: u16,
    count: u32,
) -> std::io::Result<u32> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: a plain system call; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let payload = b"spoofed";
    let total = (20 + 8 + payload.len()) as u16;
    // The kernel fills in the IP checksum and id of a raw IPPROTO_RAW packet; a UDP checksum of
    // 0 means none.
    let mut packet = Vec::with_capacity(usize::from(total));
    packet.extend_from_slice(&[0x45, 0]);
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(&40000u16.to_be_bytes());
    packet.extend_from_slice(&port.to_be_bytes());
    packet.extend_from_slice(&(total - 20).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut sent = 0;
    for _ in 0..count {
        // SAFETY: the buffer and address are valid for their sizes.
        let n = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&sin as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        sent += 1;
    }
    Ok(sent)
}
