//! This kernel's layouts for the programs, one function per hook family: tracepoint record
//! offsets from tracefs `format` files, struct member offsets from BTF. A family that cannot be
//! understood leaves its offsets absent and says why; its programs are reported not attached.

use std::{collections::HashMap, path::Path};

use triage_agent_common::{
    ABSENT, Offsets, ReceiveResetOffsets, SendResetOffsets, SetStateOffsets, SkbOffsets,
    send_reset_layout,
};

use crate::kernel::{
    btf::Btf,
    tracefs::{Format, TracefsError},
};

/// Why a program cannot run on this kernel, by program name.
pub type Problems = HashMap<&'static str, String>;

/// Layouts of this kernel, with a note for every program whose layout was not understood.
pub fn kernel_offsets(tracefs: &Path, btf: Option<&Btf>) -> (Offsets, Problems) {
    let mut o = Offsets::ABSENT;
    let mut problems = Problems::new();
    match set_state(tracefs) {
        Ok(v) => o.set_state = v,
        Err(e) => {
            problems.insert("inet_sock_set_state", e.to_string());
        }
    }
    match receive_reset(tracefs) {
        Ok(v) => o.receive_reset = v,
        Err(e) => {
            problems.insert("tcp_receive_reset", e.to_string());
        }
    }
    match send_reset(tracefs, btf) {
        Ok((send, skb)) => {
            o.send_reset = send;
            o.skb = skb;
        }
        Err(e) => {
            problems.insert("tcp_send_reset", e);
        }
    }
    (o, problems)
}

fn set_state(tracefs: &Path) -> Result<SetStateOffsets, TracefsError> {
    let f = Format::read(tracefs, "sock", "inet_sock_set_state")?;
    let t = "sock:inet_sock_set_state";
    Ok(SetStateOffsets {
        skaddr: f.offset(t, "skaddr", Some(8))?,
        oldstate: f.offset(t, "oldstate", Some(4))?,
        newstate: f.offset(t, "newstate", Some(4))?,
        protocol: f.offset(t, "protocol", Some(2))?,
    })
}

fn receive_reset(tracefs: &Path) -> Result<ReceiveResetOffsets, TracefsError> {
    let f = Format::read(tracefs, "tcp", "tcp_receive_reset")?;
    let t = "tcp:tcp_receive_reset";
    Ok(ReceiveResetOffsets {
        skaddr: f.offset(t, "skaddr", Some(8))?,
        sport: f.offset(t, "sport", Some(2))?,
        dport: f.offset(t, "dport", Some(2))?,
        family: f.offset(t, "family", Some(2))?,
        saddr: f.offset(t, "saddr", Some(4))?,
        daddr: f.offset(t, "daddr", Some(4))?,
        saddr_v6: f.offset(t, "saddr_v6", Some(16))?,
        daddr_v6: f.offset(t, "daddr_v6", Some(16))?,
        sock_cookie: f.offset(t, "sock_cookie", Some(8)).unwrap_or(ABSENT),
    })
}

fn send_reset(tracefs: &Path, btf: Option<&Btf>) -> Result<(SendResetOffsets, SkbOffsets), String> {
    let f = Format::read(tracefs, "tcp", "tcp_send_reset").map_err(|e| e.to_string())?;
    if f.size("saddr") != Some(28) {
        return Err(
            "this kernel's tcp_send_reset has no packet addresses (added in Linux 6.10): \
             refusals are seen from the connecting side only"
                .to_owned(),
        );
    }
    let btf = btf.ok_or("kernel BTF unavailable: cannot read TCP flags")?;
    let data = btf
        .member_offset("sk_buff", "data")
        .map_err(|e| format!("BTF: {e}"))?;
    let t = "tcp:tcp_send_reset";
    let send = (|| {
        Ok::<_, TracefsError>(SendResetOffsets {
            layout: send_reset_layout::SOCKADDR,
            skbaddr: f.offset(t, "skbaddr", Some(8))?,
            skaddr: f.offset(t, "skaddr", Some(8))?,
            reason: f.offset(t, "reason", Some(4)).unwrap_or(ABSENT),
            saddr: f.offset(t, "saddr", Some(28))?,
            daddr: f.offset(t, "daddr", Some(28))?,
        })
    })()
    .map_err(|e| e.to_string())?;
    Ok((send, SkbOffsets { data }))
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
