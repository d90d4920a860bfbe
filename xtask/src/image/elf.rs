//! Just enough ELF to tell whether a binary runs on an empty base: a 64-bit little-endian
//! x86-64 executable with no program interpreter (`PT_INTERP`) and no shared library
//! dependency (`DT_NEEDED`), and whether it carries an eBPF object (the agent embeds its
//! programs). Layouts: the System V ABI's ELF-64 object file format.

use anyhow::{Context as _, bail, ensure};

const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

/// The ELF machine of an OCI architecture (`amd64`, `arm64`).
pub fn machine_of(architecture: &str) -> Option<u16> {
    match architecture {
        "amd64" => Some(EM_X86_64),
        "arm64" => Some(EM_AARCH64),
        _ => None,
    }
}

/// The ELF machine of `binary`.
pub fn machine(binary: &[u8]) -> Option<u16> {
    binary
        .starts_with(MAGIC)
        .then(|| u16_at(binary, 0x12).ok())
        .flatten()
}
const EM_BPF: u16 = 247;
const ET_EXEC: u16 = 2;
/// Static PIE (Rust's musl targets link this way by default).
const ET_DYN: u16 = 3;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const MAGIC: &[u8] = b"\x7fELF\x02\x01";

fn bytes<const N: usize>(b: &[u8], at: usize) -> anyhow::Result<[u8; N]> {
    b.get(at..at.saturating_add(N))
        .and_then(|s| s.try_into().ok())
        .with_context(|| format!("truncated ELF (reading {N} bytes at {at})"))
}

fn u16_at(b: &[u8], at: usize) -> anyhow::Result<u16> {
    Ok(u16::from_le_bytes(bytes(b, at)?))
}

fn u32_at(b: &[u8], at: usize) -> anyhow::Result<u32> {
    Ok(u32::from_le_bytes(bytes(b, at)?))
}

fn u64_at(b: &[u8], at: usize) -> anyhow::Result<u64> {
    Ok(u64::from_le_bytes(bytes(b, at)?))
}

fn usize_at(b: &[u8], at: usize) -> anyhow::Result<usize> {
    Ok(usize::try_from(u64_at(b, at)?)?)
}

/// Fails unless `binary` is a static executable for `architecture` (OCI's spelling).
pub fn check_static(binary: &[u8], architecture: &str) -> anyhow::Result<()> {
    ensure!(
        binary.starts_with(MAGIC),
        "not a 64-bit little-endian ELF file"
    );
    let kind = u16_at(binary, 0x10)?;
    ensure!(
        kind == ET_EXEC || kind == ET_DYN,
        "ELF type {kind}: not an executable"
    );
    let machine = u16_at(binary, 0x12)?;
    ensure!(
        Some(machine) == machine_of(architecture),
        "ELF machine {machine}: not {architecture}"
    );
    let phoff = usize_at(binary, 0x20)?;
    let phentsize = usize::from(u16_at(binary, 0x36)?);
    let phnum = usize::from(u16_at(binary, 0x38)?);
    ensure!(
        phentsize >= 56,
        "program header entries of {phentsize} bytes"
    );
    ensure!(phnum > 0, "no program headers");
    ensure!(
        phnum
            .checked_mul(phentsize)
            .and_then(|len| phoff.checked_add(len))
            .is_some_and(|end| end <= binary.len()),
        "truncated ELF (program headers past the end)"
    );
    for i in 0..phnum {
        let ph = phoff.saturating_add(i.saturating_mul(phentsize));
        match u32_at(binary, ph)? {
            PT_INTERP => bail!("dynamically linked: it names a program interpreter (PT_INTERP)"),
            PT_DYNAMIC => {
                let offset = usize_at(binary, ph + 8)?;
                let size = usize_at(binary, ph + 32)?;
                for entry in (offset..offset.saturating_add(size)).step_by(16) {
                    match u64_at(binary, entry)? {
                        DT_NULL => break,
                        DT_NEEDED => bail!("dynamically linked: it needs a shared library"),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether an eBPF ELF object (machine EM_BPF) is embedded anywhere in `binary`.
pub fn embeds_bpf_object(binary: &[u8]) -> bool {
    binary
        .windows(MAGIC.len())
        .enumerate()
        .any(|(at, w)| w == MAGIC && at > 0 && u16_at(binary, at + 0x12).is_ok_and(|m| m == EM_BPF))
}

/// Test fixtures: minimal ELF files.
#[cfg(test)]
pub mod fixtures {
    /// A 64-bit x86-64 executable header with the given program header types (each entry's
    /// other fields zero; a PT_DYNAMIC entry points at a dynamic section holding `needed`
    /// DT_NEEDED entries) followed by `tail`.
    pub fn elf(program_headers: &[u32], needed: usize, tail: &[u8]) -> Vec<u8> {
        let phoff = 64usize;
        let dynamic_at = phoff + 56 * program_headers.len();
        let dynamic_len = 16 * (needed + 1);
        let mut b = vec![0u8; dynamic_at + dynamic_len];
        b[..6].copy_from_slice(super::MAGIC);
        b[0x10..0x12].copy_from_slice(&super::ET_DYN.to_le_bytes());
        b[0x12..0x14].copy_from_slice(&super::EM_X86_64.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&(phoff as u64).to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(program_headers.len() as u16).to_le_bytes());
        for (i, &kind) in program_headers.iter().enumerate() {
            let ph = phoff + 56 * i;
            b[ph..ph + 4].copy_from_slice(&kind.to_le_bytes());
            b[ph + 8..ph + 16].copy_from_slice(&(dynamic_at as u64).to_le_bytes());
            b[ph + 32..ph + 40].copy_from_slice(&(dynamic_len as u64).to_le_bytes());
        }
        for i in 0..needed {
            let at = dynamic_at + 16 * i;
            b[at..at + 8].copy_from_slice(&super::DT_NEEDED.to_le_bytes());
        }
        b.extend_from_slice(tail);
        b
    }

    /// A static executable embedding a (header-only) eBPF object.
    pub fn static_with_bpf() -> Vec<u8> {
        let mut bpf = vec![0u8; 64];
        bpf[..6].copy_from_slice(super::MAGIC);
        bpf[0x12..0x14].copy_from_slice(&super::EM_BPF.to_le_bytes());
        elf(&[1, super::PT_DYNAMIC], 0, &bpf)
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::elf, *};

    #[test]
    fn static_pie_with_an_empty_dynamic_section_is_static() {
        check_static(&fixtures::static_with_bpf(), "amd64").unwrap();
        // The same executable is not an arm64 one.
        assert!(check_static(&fixtures::static_with_bpf(), "arm64").is_err());
        assert_eq!(machine(&fixtures::static_with_bpf()), machine_of("amd64"));
        check_static(&elf(&[1], 0, &[]), "amd64").unwrap();
    }

    #[test]
    fn an_interpreter_or_a_needed_library_is_dynamic() {
        let e = check_static(&elf(&[1, PT_INTERP], 0, &[]), "amd64").unwrap_err();
        assert!(e.to_string().contains("PT_INTERP"), "{e}");
        let e = check_static(&elf(&[1, PT_DYNAMIC], 1, &[]), "amd64").unwrap_err();
        assert!(e.to_string().contains("shared library"), "{e}");
    }

    #[test]
    fn not_an_x86_64_executable() {
        assert!(check_static(b"#!/bin/sh\n", "amd64").is_err());
        let mut b = elf(&[1], 0, &[]);
        b[0x12] = 183; // aarch64
        assert!(check_static(&b, "amd64").is_err());
        let mut b = elf(&[1], 0, &[]);
        b[0x10] = 1; // relocatable object
        assert!(check_static(&b, "amd64").is_err());
        // Program headers past the end.
        let b = elf(&[1], 0, &[]);
        assert!(check_static(&b[..80], "amd64").is_err());
    }

    #[test]
    fn finds_an_embedded_bpf_object() {
        assert!(embeds_bpf_object(&fixtures::static_with_bpf()));
        assert!(!embeds_bpf_object(&elf(&[1], 0, &[])));
    }
}
