//! Loads the embedded eBPF object with this kernel's layouts and attaches each program. A
//! program that fails to attach is reported (Status shows which and why) and the others keep
//! running: partial evidence beats none. Dropping [`Probes`] detaches everything.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use tracing::{info, warn};
use triage_agent_common::{
    ABSENT, EVENTS_MAP, LOSS_MAP, LOST_CONNECT_TABLE, LOST_RESERVE, OFFSETS_GLOBAL, Offsets,
    send_reset_layout,
};

use crate::{
    api::{KernelLoss, ProbeStatus},
    probes::{
        btf::Btf,
        tracefs::{self, Format},
    },
};

/// The eBPF object built by build.rs from agent-ebpf.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/triage-agent-ebpf"));

/// The programs: (program name in the object, tracepoint category, tracepoint name).
pub const PROGRAMS: [(&str, &str, &str); 3] = [
    ("inet_sock_set_state", "sock", "inet_sock_set_state"),
    ("tcp_receive_reset", "tcp", "tcp_receive_reset"),
    ("tcp_send_reset", "tcp", "tcp_send_reset"),
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("tracefs is not mounted and mounting it at {path} failed (needs CAP_SYS_ADMIN)")]
    MountTracefs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF map {name} missing or unusable")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("no program could be attached: {0}")]
    NothingAttached(String),
}

/// The loaded programs. Keep alive while collecting; drop to detach.
pub struct Probes {
    _ebpf: Ebpf,
    pub statuses: Vec<ProbeStatus>,
}

/// The per-CPU loss counters of the kernel side.
pub struct LossMap(Mutex<PerCpuArray<MapData, u64>>);

impl KernelLoss for LossMap {
    fn read(&self) -> (u64, u64) {
        let Ok(map) = self.0.lock() else {
            return (0, 0);
        };
        let sum = |slot| {
            map.get(&slot, 0)
                .map(|v| v.iter().sum::<u64>())
                .unwrap_or(0)
        };
        (sum(LOST_RESERVE), sum(LOST_CONNECT_TABLE))
    }
}

/// Makes sure tracefs is available; mounts it when missing (as the kernel docs describe).
pub fn ensure_tracefs() -> Result<PathBuf, LoadError> {
    if let Some(found) = tracefs::find_mounted() {
        return Ok(found);
    }
    let path = PathBuf::from(tracefs::TRACEFS_PATHS[0]);
    mount_tracefs(&path).map_err(|source| LoadError::MountTracefs {
        path: path.clone(),
        source,
    })?;
    info!(path = %path.display(), "mounted tracefs");
    Ok(path)
}

fn mount_tracefs(path: &Path) -> std::io::Result<()> {
    use std::{ffi::CString, os::unix::ffi::OsStrExt};
    let target = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Layouts of this kernel, with a note for every tracepoint that could not be understood.
pub fn kernel_offsets(
    tracefs_root: &Path,
    btf: Option<&Btf>,
) -> (Offsets, HashMap<&'static str, String>) {
    let mut o = Offsets::ABSENT;
    let mut problems = HashMap::new();

    match Format::read(tracefs_root, "sock", "inet_sock_set_state").and_then(|f| {
        let t = "sock:inet_sock_set_state";
        Ok((
            f.offset(t, "skaddr", Some(8))?,
            f.offset(t, "oldstate", Some(4))?,
            f.offset(t, "newstate", Some(4))?,
            f.offset(t, "protocol", Some(2))?,
        ))
    }) {
        Ok((sk, old, new, proto)) => {
            o.set_state_skaddr = sk;
            o.set_state_oldstate = old;
            o.set_state_newstate = new;
            o.set_state_protocol = proto;
        }
        Err(e) => {
            problems.insert("inet_sock_set_state", e.to_string());
        }
    }

    match Format::read(tracefs_root, "tcp", "tcp_receive_reset").and_then(|f| {
        let t = "tcp:tcp_receive_reset";
        let mut r = Offsets::ABSENT;
        r.rcv_reset_skaddr = f.offset(t, "skaddr", Some(8))?;
        r.rcv_reset_sport = f.offset(t, "sport", Some(2))?;
        r.rcv_reset_dport = f.offset(t, "dport", Some(2))?;
        r.rcv_reset_family = f.offset(t, "family", Some(2))?;
        r.rcv_reset_saddr = f.offset(t, "saddr", Some(4))?;
        r.rcv_reset_daddr = f.offset(t, "daddr", Some(4))?;
        r.rcv_reset_saddr_v6 = f.offset(t, "saddr_v6", Some(16))?;
        r.rcv_reset_daddr_v6 = f.offset(t, "daddr_v6", Some(16))?;
        r.rcv_reset_sock_cookie = f.offset(t, "sock_cookie", Some(8)).unwrap_or(ABSENT);
        Ok(r)
    }) {
        Ok(r) => {
            o.rcv_reset_skaddr = r.rcv_reset_skaddr;
            o.rcv_reset_sport = r.rcv_reset_sport;
            o.rcv_reset_dport = r.rcv_reset_dport;
            o.rcv_reset_family = r.rcv_reset_family;
            o.rcv_reset_saddr = r.rcv_reset_saddr;
            o.rcv_reset_daddr = r.rcv_reset_daddr;
            o.rcv_reset_saddr_v6 = r.rcv_reset_saddr_v6;
            o.rcv_reset_daddr_v6 = r.rcv_reset_daddr_v6;
            o.rcv_reset_sock_cookie = r.rcv_reset_sock_cookie;
        }
        Err(e) => {
            problems.insert("tcp_receive_reset", e.to_string());
        }
    }

    let skb_data = btf.map(|b| b.member_offset("sk_buff", "data"));
    match (
        Format::read(tracefs_root, "tcp", "tcp_send_reset"),
        skb_data,
    ) {
        (Ok(f), Some(Ok(data))) if f.size("saddr") == Some(28) => {
            let t = "tcp:tcp_send_reset";
            let r = (|| {
                Ok::<_, tracefs::TracefsError>((
                    f.offset(t, "skbaddr", Some(8))?,
                    f.offset(t, "skaddr", Some(8))?,
                    f.offset(t, "saddr", Some(28))?,
                    f.offset(t, "daddr", Some(28))?,
                ))
            })();
            match r {
                Ok((skb, sk, saddr, daddr)) => {
                    o.send_reset_layout = send_reset_layout::SOCKADDR;
                    o.send_reset_skbaddr = skb;
                    o.send_reset_skaddr = sk;
                    o.send_reset_saddr = saddr;
                    o.send_reset_daddr = daddr;
                    o.send_reset_reason = f.offset(t, "reason", Some(4)).unwrap_or(ABSENT);
                    o.skb_data = data;
                }
                Err(e) => {
                    problems.insert("tcp_send_reset", e.to_string());
                }
            }
        }
        (Ok(_), Some(Ok(_))) => {
            problems.insert(
                "tcp_send_reset",
                "this kernel's tcp_send_reset has no packet addresses (added in Linux 6.10): \
                 refusals are seen from the connecting side only"
                    .to_owned(),
            );
        }
        (Err(e), _) => {
            problems.insert("tcp_send_reset", e.to_string());
        }
        (_, Some(Err(e))) => {
            problems.insert("tcp_send_reset", format!("BTF: {e}"));
        }
        (_, None) => {
            problems.insert(
                "tcp_send_reset",
                "kernel BTF unavailable: cannot read TCP flags".to_owned(),
            );
        }
    }
    (o, problems)
}

/// Names of `enum sk_rst_reason` values on this kernel, without the common prefix.
pub fn reset_reason_names(btf: Option<&Btf>) -> HashMap<u32, String> {
    let Some(Ok(values)) = btf.map(|b| b.enum_values("sk_rst_reason")) else {
        return HashMap::new();
    };
    values
        .into_iter()
        .filter_map(|(name, value)| {
            let v = u32::try_from(value).ok()?;
            Some((
                v,
                name.strip_prefix("SK_RST_REASON_")
                    .unwrap_or(&name)
                    .to_owned(),
            ))
        })
        .collect()
}

/// Loads and attaches the programs. Returns the ring buffer and loss map too.
pub fn load(
    tracefs_root: &Path,
    btf: Option<&Btf>,
) -> Result<(Probes, RingBuf<MapData>, LossMap), LoadError> {
    let started = std::time::Instant::now();
    let (offsets, problems) = kernel_offsets(tracefs_root, btf);
    let mut ebpf = EbpfLoader::new()
        .override_global(OFFSETS_GLOBAL, &offsets, true)
        .load(EBPF_OBJECT)
        .map_err(LoadError::Load)?;
    let loaded = started.elapsed();

    let mut statuses = Vec::new();
    for (name, category, tracepoint) in PROGRAMS {
        let hook = format!("tracepoint/{category}/{tracepoint}");
        let result = match problems.get(name) {
            Some(p) => Err(p.clone()),
            None => attach(&mut ebpf, name, category, tracepoint),
        };
        match &result {
            Ok(()) => info!(program = name, %hook, "attached"),
            Err(error) => warn!(program = name, %hook, %error, "not attached"),
        }
        statuses.push(ProbeStatus {
            name: name.to_owned(),
            hook,
            attached: result.is_ok(),
            error: result.err(),
        });
    }
    if !statuses.iter().any(|s| s.attached) {
        let why: Vec<String> = statuses.iter().filter_map(|s| s.error.clone()).collect();
        return Err(LoadError::NothingAttached(why.join("; ")));
    }
    let ring = take_map(&mut ebpf, EVENTS_MAP, RingBuf::try_from)?;
    let loss = take_map(&mut ebpf, LOSS_MAP, PerCpuArray::try_from)?;
    info!(
        load_ms = loaded.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "eBPF programs loaded"
    );
    Ok((
        Probes {
            _ebpf: ebpf,
            statuses,
        },
        ring,
        LossMap(Mutex::new(loss)),
    ))
}

/// Takes a map out of the object and opens it as its typed wrapper.
fn take_map<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    typed: impl FnOnce(aya::maps::Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, LoadError> {
    let map = ebpf.take_map(name).ok_or_else(|| LoadError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })?;
    typed(map).map_err(|source| LoadError::Map { name, source })
}

fn attach(ebpf: &mut Ebpf, name: &str, category: &str, tracepoint: &str) -> Result<(), String> {
    let program: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} not in the object"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    program.load().map_err(|e| format!("verifier/load: {e}"))?;
    program
        .attach(category, tracepoint)
        .map_err(|e| format!("attach: {e}"))?;
    Ok(())
}
