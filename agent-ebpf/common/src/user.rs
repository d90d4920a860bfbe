//! The userspace side (feature `user`): the shared types as `aya::Pod`, so the agent can read
//! them from and write them to maps.

// SAFETY: plain #[repr(C)] data of integers and byte arrays with explicit padding; every bit
// pattern is valid.
unsafe impl aya::Pod for crate::DnsTiming {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::DnsKey {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::DnsEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::DnsHeld {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::DnsSlot {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::DnsAnswered {}
// SAFETY: plain #[repr(C)] data of integers and byte arrays with explicit padding; every bit
// pattern is valid.
unsafe impl aya::Pod for crate::Offsets {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::PendingConnect {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::FlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::FlowStats {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::FlowRepeat {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::DnsPorts {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::DnsRepeatKey {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::DnsRepeats {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::ShareKey {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::Share {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::CgroupLosses {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::NetnsCgroups {}
