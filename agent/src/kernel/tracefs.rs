//! Tracepoint record layouts from tracefs `format` files, and mounting tracefs when it is
//! missing. Offsets are read from the running kernel, never compiled in: the same tracepoint
//! moves fields between kernel versions (tcp_send_reset changed completely in 6.10).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

/// Where tracefs is normally mounted, and the legacy location under debugfs.
pub const TRACEFS_PATHS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// One field of a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldLayout {
    pub offset: u32,
    pub size: u32,
}

/// The fields of one tracepoint record, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Format {
    pub fields: HashMap<String, FieldLayout>,
}

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tracepoint {tracepoint} has no field {field:?} of {size} bytes")]
    MissingField {
        tracepoint: String,
        field: String,
        size: String,
    },
}

impl Format {
    /// Parses the text of an `events/<category>/<name>/format` file. Lines that are not field
    /// descriptions are skipped; malformed field lines are skipped too (never a panic).
    pub fn parse(text: &str) -> Format {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in rest.split(';') {
                let part = part.trim();
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse::<u32>().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse::<u32>().ok();
                } else if decl.is_none() && !part.is_empty() && !part.contains(':') {
                    decl = Some(part);
                }
            }
            let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
                continue;
            };
            // "const void * skaddr", "__u8 saddr[4]", "enum sk_rst_reason reason"
            let last = decl.rsplit([' ', '*']).next().unwrap_or(decl);
            let name = last.split('[').next().unwrap_or(last).trim();
            if !name.is_empty() {
                fields.insert(name.to_owned(), FieldLayout { offset, size });
            }
        }
        Format { fields }
    }

    /// Reads the format of `category/name` under a tracefs mount.
    pub fn read(tracefs: &Path, category: &str, name: &str) -> Result<Format, TracefsError> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        std::fs::read_to_string(&path)
            .map(|t| Format::parse(&t))
            .map_err(|source| TracefsError::Read { path, source })
    }

    /// Offset of a field, checking its size (`None` accepts any size).
    pub fn offset(
        &self,
        tracepoint: &str,
        field: &str,
        size: Option<u32>,
    ) -> Result<u32, TracefsError> {
        match self.fields.get(field) {
            Some(f) if size.is_none_or(|s| s == f.size) => Ok(f.offset),
            _ => Err(TracefsError::MissingField {
                tracepoint: tracepoint.to_owned(),
                field: field.to_owned(),
                size: size.map_or_else(|| "any".to_owned(), |s| s.to_string()),
            }),
        }
    }

    /// Size of a field, if present.
    pub fn size(&self, field: &str) -> Option<u32> {
        self.fields.get(field).map(|f| f.size)
    }
}

/// The first tracefs directory that has events in it.
pub fn find_mounted() -> Option<PathBuf> {
    TRACEFS_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// tracefs could not be found and mounting it failed.
#[cfg(feature = "node-agent")]
#[derive(Debug, thiserror::Error)]
#[error("tracefs is not mounted and mounting it at {path} failed (needs CAP_SYS_ADMIN)")]
pub struct MountError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Where tracefs is; mounts it when missing (as the kernel's tracing docs describe), which a
/// bare host without systemd may need. Hosts with systemd mount it at boot.
#[cfg(feature = "node-agent")]
pub fn ensure_mounted() -> Result<PathBuf, MountError> {
    use std::{ffi::CString, os::unix::ffi::OsStrExt};
    if let Some(found) = find_mounted() {
        return Ok(found);
    }
    let path = PathBuf::from(TRACEFS_PATHS[0]);
    let mount = || {
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
    };
    match mount() {
        Ok(()) => {
            tracing::info!(path = %path.display(), "mounted tracefs");
            Ok(path)
        }
        // Another process (another agent starting at the same time) may have mounted it
        // between our look and our mount: EBUSY then means it is there.
        Err(source) => find_mounted().ok_or(MountError { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_RESET_6_18: &str = "name: tcp_send_reset
ID: 1500
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;

print fmt: \"skbaddr=%p\", REC->skbaddr
";

    #[test]
    fn parses_kernel_format() {
        let f = Format::parse(SEND_RESET_6_18);
        assert_eq!(f.offset("t", "skbaddr", Some(8)).unwrap(), 8);
        assert_eq!(f.offset("t", "skaddr", Some(8)).unwrap(), 16);
        assert_eq!(f.offset("t", "reason", Some(4)).unwrap(), 28);
        assert_eq!(f.offset("t", "saddr", Some(28)).unwrap(), 32);
        assert_eq!(f.offset("t", "daddr", None).unwrap(), 60);
        assert_eq!(f.size("common_pid"), Some(4));
        assert!(f.offset("t", "saddr", Some(4)).is_err(), "size is checked");
        assert!(f.offset("t", "sport", None).is_err());
    }

    #[test]
    fn garbage_is_skipped() {
        let f =
            Format::parse("field:\nfield:int x;offset:zz;size:4;\nfield:;offset:1;size:1;\n\u{0}");
        assert!(f.fields.is_empty());
    }
    // The running kernel's formats are exercised by the privileged end-to-end tests: the agent
    // only attaches a program whose fields were all found (Status must list every probe attached).
}
