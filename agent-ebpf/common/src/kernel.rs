//! Values of the kernel's ABI both sides compare against: address families, IP protocol
//! numbers, TCP states, connect() errnos and the length of a task's command name.

/// Length of a task's command name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Address family values as the kernel reports them.
pub const AF_INET: u16 = 2;
/// See [`AF_INET`].
pub const AF_INET6: u16 = 10;

/// TCP states as in include/net/tcp_states.h (part of the kernel ABI: the tracepoint's print
/// format names them with these values).
pub mod tcp_state {
    pub const SYN_SENT: i32 = 2;
    pub const TIME_WAIT: i32 = 6;
    pub const CLOSE: i32 = 7;
    pub const NEW_SYN_RECV: i32 = 12;
}

/// IP protocol numbers.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// TCP header flag bits (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Socket errnos a failed connect() ends with (asm-generic/errno.h; the same on every
/// architecture Kubernetes nodes run).
pub mod errno {
    pub const EPERM: u32 = 1;
    pub const EACCES: u32 = 13;
    pub const ENETUNREACH: u32 = 101;
    pub const ETIMEDOUT: u32 = 110;
    pub const ECONNREFUSED: u32 = 111;
    pub const EHOSTUNREACH: u32 = 113;
}
