//! The process that runs inside simulated pods: `sleep` (the pod's pause process), `listen PORT`
//! (a server), `connect IP:PORT COUNT INTERVAL_MS` (a client that reports each outcome).
//! Standard library only, so it starts in a millisecond.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    time::Duration,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
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
        ["connect", addr, count, interval_ms] => {
            let (Ok(addr), Ok(count), Ok(interval)) = (
                addr.parse::<SocketAddr>(),
                count.parse::<u32>(),
                interval_ms.parse::<u64>(),
            ) else {
                eprintln!("sim-workload: usage: connect IP:PORT COUNT INTERVAL_MS");
                return ExitCode::FAILURE;
            };
            for _ in 0..count {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(_) => println!("connected"),
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => println!("refused"),
                    Err(e) => println!("error {e}"),
                }
                std::thread::sleep(Duration::from_millis(interval));
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "sim-workload: usage: sleep | listen PORT | connect IP:PORT COUNT INTERVAL_MS"
            );
            ExitCode::FAILURE
        }
    }
}
