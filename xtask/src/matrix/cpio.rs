//! A writer of the Linux initramfs format: "newc" cpio (ASCII headers, 4-byte alignment), as
//! the kernel's own reader takes it (Documentation/driver-api/early-userspace/buffer-format.rst).
//! Entries are written in the order given; directories must come before what they hold. File
//! contents stream from disk, so an archive of large static binaries never sits in memory.

use std::{
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
};

const MAGIC: &[u8] = b"070701";
const TRAILER: &str = "TRAILER!!!";
/// `st_mode` file-type bits.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Where a regular file's bytes come from.
#[derive(Debug, Clone)]
pub enum Contents {
    Bytes(Vec<u8>),
    /// Copied from this host file when the archive is written.
    Host(PathBuf),
}

/// What an entry is.
#[derive(Debug, Clone)]
pub enum Kind {
    Dir,
    File(Contents),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

/// One archive member: its path inside the archive (no leading `/`), permission bits, kind.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub kind: Kind,
}

impl Entry {
    pub fn dir(path: &str) -> Self {
        Self::new(path, 0o755, Kind::Dir)
    }

    pub fn file(path: &str, mode: u32, contents: Contents) -> Self {
        Self::new(path, mode, Kind::File(contents))
    }

    pub fn symlink(path: &str, target: &str) -> Self {
        Self::new(path, 0o777, Kind::Symlink(target.to_owned()))
    }

    pub fn char_device(path: &str, mode: u32, major: u32, minor: u32) -> Self {
        Self::new(path, mode, Kind::CharDevice { major, minor })
    }

    fn new(path: &str, mode: u32, kind: Kind) -> Self {
        Self {
            path: path.trim_start_matches('/').to_owned(),
            mode,
            kind,
        }
    }
}

/// Writes `entries` and the trailer to `out`; returns the bytes written.
pub fn write(out: &mut impl Write, entries: &[Entry]) -> io::Result<u64> {
    let mut w = Counter { inner: out, n: 0 };
    for (i, entry) in entries.iter().enumerate() {
        // Inode numbers only need to be distinct (no hard links here); 0 is avoided.
        let ino = u32::try_from(i + 1).map_err(|_| io::Error::other("too many entries"))?;
        write_entry(&mut w, ino, entry)?;
    }
    write_header(&mut w, &Header::trailer())?;
    Ok(w.n)
}

fn write_entry(w: &mut Counter<'_, impl Write>, ino: u32, entry: &Entry) -> io::Result<()> {
    let perm = entry.mode & 0o7777;
    let mut header = Header {
        ino,
        mode: perm,
        nlink: 1,
        filesize: 0,
        rdev: (0, 0),
        name: &entry.path,
    };
    match &entry.kind {
        Kind::Dir => {
            header.mode |= S_IFDIR;
            header.nlink = 2;
            write_header(w, &header)
        }
        Kind::Symlink(target) => {
            header.mode |= S_IFLNK;
            header.filesize = size32(target.len() as u64)?;
            write_header(w, &header)?;
            w.write_all(target.as_bytes())?;
            pad(w)
        }
        Kind::CharDevice { major, minor } => {
            header.mode |= S_IFCHR;
            header.rdev = (*major, *minor);
            write_header(w, &header)
        }
        Kind::File(Contents::Bytes(bytes)) => {
            header.mode |= S_IFREG;
            header.filesize = size32(bytes.len() as u64)?;
            write_header(w, &header)?;
            w.write_all(bytes)?;
            pad(w)
        }
        Kind::File(Contents::Host(path)) => {
            header.mode |= S_IFREG;
            let mut file = File::open(path).map_err(|e| with_path(e, path))?;
            let len = file.metadata().map_err(|e| with_path(e, path))?.len();
            header.filesize = size32(len)?;
            write_header(w, &header)?;
            let copied = io::copy(&mut file, w).map_err(|e| with_path(e, path))?;
            if copied != len {
                return Err(io::Error::other(format!(
                    "{} changed size while being archived",
                    path.display()
                )));
            }
            pad(w)
        }
    }
}

struct Header<'a> {
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: u32,
    rdev: (u32, u32),
    name: &'a str,
}

impl Header<'static> {
    fn trailer() -> Self {
        Self {
            ino: 0,
            mode: 0,
            nlink: 1,
            filesize: 0,
            rdev: (0, 0),
            name: TRAILER,
        }
    }
}

fn write_header(w: &mut Counter<'_, impl Write>, h: &Header<'_>) -> io::Result<()> {
    // The name's size counts its terminating NUL.
    let namesize = size32(h.name.len() as u64 + 1)?;
    // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    let fields = [
        h.ino, h.mode, 0, 0, h.nlink, 0, h.filesize, 0, 0, h.rdev.0, h.rdev.1, namesize, 0,
    ];
    w.write_all(MAGIC)?;
    for f in fields {
        write!(w, "{f:08x}")?;
    }
    w.write_all(h.name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w)
}

fn size32(n: u64) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::other("newc cpio members are limited to 4 GiB"))
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Pads to the next multiple of 4 from the archive's start.
fn pad(w: &mut Counter<'_, impl Write>) -> io::Result<()> {
    let rem = (4 - w.n % 4) % 4;
    let zeros = [0u8; 3];
    w.write_all(zeros.get(..rem as usize).unwrap_or_default())
}

/// Counts what passes through, for the alignment.
struct Counter<'a, W> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for Counter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member read back by an independent minimal newc reader.
    #[derive(Debug, PartialEq)]
    struct Read {
        name: String,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    fn parse(mut bytes: &[u8]) -> Vec<Read> {
        let mut out = Vec::new();
        let total = bytes.len();
        loop {
            assert_eq!(
                &bytes[..6],
                MAGIC,
                "magic at offset {}",
                total - bytes.len()
            );
            let field = |i: usize| {
                let s = std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (mode, nlink, filesize) = (field(1), field(4), field(6) as usize);
            let rdev = (field(9), field(10));
            let namesize = field(11) as usize;
            assert_eq!(field(12), 0, "check field");
            let name_end = 110 + namesize;
            assert_eq!(bytes[name_end - 1], 0, "name is NUL-terminated");
            let name = String::from_utf8(bytes[110..name_end - 1].to_vec()).unwrap();
            let data_start = name_end.next_multiple_of(4);
            let data = bytes[data_start..data_start + filesize].to_vec();
            let next = (data_start + filesize).next_multiple_of(4);
            bytes = &bytes[next..];
            if name == TRAILER {
                assert!(bytes.is_empty(), "nothing after the trailer");
                return out;
            }
            out.push(Read {
                name,
                mode,
                nlink,
                rdev,
                data,
            });
        }
    }

    #[test]
    fn one_file_matches_the_reference_bytes() {
        let mut out = Vec::new();
        let entries = [Entry::file(
            "/init",
            0o755,
            Contents::Bytes(b"hi\n".to_vec()),
        )];
        let n = write(&mut out, &entries).unwrap();
        assert_eq!(n, out.len() as u64);
        // Magic, then ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
        // rdevminor namesize check as 8 hex digits each, the name and its NUL padded to 4,
        // the data padded to 4: what `cpio -o -H newc` writes for this file with ino 1 and
        // uid, gid and mtime 0.
        let mut want = b"070701".to_vec();
        for field in [
            "00000001", "000081ed", "00000000", "00000000", "00000001", "00000000", "00000003",
            "00000000", "00000000", "00000000", "00000000", "00000005", "00000000",
        ] {
            want.extend_from_slice(field.as_bytes());
        }
        want.extend_from_slice(b"init\0\0");
        want.extend_from_slice(b"hi\n\0");
        assert_eq!(&out[..want.len()], &want[..]);
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn every_kind_reads_back() {
        let host = std::env::temp_dir().join(format!("ta-cpio-test-{}", std::process::id()));
        std::fs::write(&host, vec![7u8; 5001]).unwrap();
        let entries = [
            Entry::dir("dev"),
            Entry::char_device("dev/console", 0o600, 5, 1),
            Entry::dir("bin"),
            Entry::file("bin/busybox", 0o755, Contents::Host(host.clone())),
            Entry::symlink("bin/sh", "busybox"),
            Entry::file("etc-x", 0o644, Contents::Bytes(Vec::new())),
        ];
        let mut out = Vec::new();
        write(&mut out, &entries).unwrap();
        let read = parse(&out);
        let names: Vec<&str> = read.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "bin",
                "bin/busybox",
                "bin/sh",
                "etc-x"
            ]
        );
        assert_eq!(read[0].mode, 0o040_755);
        assert_eq!(read[0].nlink, 2);
        assert_eq!(read[1].mode, 0o020_600);
        assert_eq!(read[1].rdev, (5, 1));
        assert_eq!(read[3].mode, 0o100_755);
        assert_eq!(read[3].data, vec![7u8; 5001]);
        assert_eq!(read[4].mode, 0o120_777);
        assert_eq!(read[4].data, b"busybox");
        assert!(read[5].data.is_empty());
        std::fs::remove_file(host).unwrap();
    }

    #[test]
    fn a_missing_host_file_names_its_path() {
        let entries = [Entry::file(
            "x",
            0o644,
            Contents::Host("/nonexistent/ta-matrix".into()),
        )];
        let err = write(&mut Vec::new(), &entries).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ta-matrix"), "{err}");
    }
}
