//! Kernel code addresses to names, from `/proc/kallsyms`: where a kernel without drop reasons
//! (before Linux 5.17) freed a dropped packet (`nf_hook_slow+0x8c`). Read once at startup,
//! text symbols only (a module loaded later resolves to nothing, or to the symbol before it
//! within [`MAX_FUNCTION`]). Without CAP_SYSLOG the kernel shows every address as zero
//! (kptr_restrict): then nothing resolves, and no address is ever shown in its place.

/// Text symbols of the running kernel and its modules, sorted by address.
#[derive(Debug, Default)]
pub struct Symbols {
    by_address: Vec<(u64, String)>,
}

impl Symbols {
    /// Reads `/proc/kallsyms`; empty when it cannot be read or shows no addresses.
    pub fn load() -> Symbols {
        std::fs::read_to_string("/proc/kallsyms")
            .map(|text| Symbols::parse(&text))
            .unwrap_or_default()
    }

    /// Parses kallsyms text (`ffffffff81000000 T _stext` or with a `[module]` suffix); lines
    /// it does not understand are skipped.
    pub fn parse(text: &str) -> Symbols {
        let mut by_address: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let address = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                let name = parts.next()?;
                (address != 0 && matches!(kind, "t" | "T")).then(|| (address, name.to_owned()))
            })
            .collect();
        by_address.sort_unstable();
        by_address.dedup_by_key(|(a, _)| *a);
        Symbols { by_address }
    }

    /// Whether any symbol was read.
    pub fn is_empty(&self) -> bool {
        self.by_address.is_empty()
    }

    /// `name+0xoffset` of the symbol holding `address`; none when no symbol does.
    pub fn name(&self, address: u64) -> Option<String> {
        let at = self.by_address.partition_point(|(a, _)| *a <= address);
        match at.checked_sub(1).and_then(|i| self.by_address.get(i)) {
            Some((start, name)) if address - start < MAX_FUNCTION => {
                Some(format!("{name}+{:#x}", address - start))
            }
            _ => None,
        }
    }
}

/// No kernel function is this long: an address further past the last symbol is not in it.
const MAX_FUNCTION: u64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::Symbols;

    #[test]
    fn addresses_resolve_to_the_text_symbol_holding_them() {
        let s = Symbols::parse(
            "ffffffff81000000 T _stext\n\
             ffffffff81a00000 t nf_hook_slow\n\
             ffffffff81a00100 T tcp_v4_rcv\n\
             ffffffff81b00000 D some_data\n\
             ffffffffc0100000 t nft_do_chain\t[nf_tables]\n\
             garbage line\n\
             zz T bad_address\n",
        );
        let name = |a| s.name(a);
        assert_eq!(
            name(0xffffffff81a0008c).as_deref(),
            Some("nf_hook_slow+0x8c")
        );
        assert_eq!(name(0xffffffff81a00100).as_deref(), Some("tcp_v4_rcv+0x0"));
        assert_eq!(
            name(0xffffffffc0100010).as_deref(),
            Some("nft_do_chain+0x10")
        );
        // Before the first symbol, or far past the last one: nothing.
        assert_eq!(name(0xffffffff80000000), None);
        assert_eq!(name(0xffffffffc0300000), None);
    }

    #[test]
    fn hidden_addresses_resolve_nothing() {
        // Without CAP_SYSLOG every address reads as zero.
        let s = Symbols::parse("0000000000000000 T _stext\n0000000000000000 t nf_hook_slow\n");
        assert!(s.is_empty());
        assert_eq!(s.name(0xffffffff81a0008c), None);
    }
}
