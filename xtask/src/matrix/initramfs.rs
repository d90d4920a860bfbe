//! The initramfs each VM boots: busybox-static, a generated /init, minimal /etc files, the
//! payload's files, host binaries with every shared library `ldd` names (and the ELF
//! interpreter) at their host paths, and the kernel's modules. The part shared by every kernel
//! ([`Base`]) is assembled once; [`write`] adds one kernel's modules and /init.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufWriter, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use super::{
    Payload, console,
    cpio::{self, Contents, Entry},
};

/// Where busybox applets are linked at boot: last on PATH, so the payload's and the host's
/// programs (ip, nft) win over busybox's smaller versions.
const APPLETS: &str = "/usr/libexec/busybox";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The modules' directory in the guest.
const MODULES: &str = "/lib/modules/ta-matrix";
/// The payload command, as a script /init runs.
const COMMAND: &str = "/etc/ta-matrix/command";
/// Debian's busybox-static installs it here (merged /usr: /bin is /usr/bin).
const BUSYBOX: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];
/// Where host binaries named without a path are looked for (root's PATH may lack sbin).
const HOST_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";
const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";
const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n\
                        networks: files\nprotocols: files\nservices: files\n";
/// Small host tables some tools resolve names with (nft's port and protocol names).
const HOST_TABLES: &[&str] = &["/etc/protocols", "/etc/services"];

/// An archive being assembled: members by path, parents created on the way.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

impl Tree {
    fn add(&mut self, entry: Entry) {
        for (end, _) in entry.path.match_indices('/') {
            let parent = entry.path.get(..end).unwrap_or_default();
            self.entries
                .entry(parent.to_owned())
                .or_insert_with(|| Entry::dir(parent));
        }
        self.entries.insert(entry.path.clone(), entry);
    }

    fn text(&mut self, path: &str, mode: u32, text: &str) {
        self.add(Entry::file(
            path,
            mode,
            Contents::Bytes(text.as_bytes().to_vec()),
        ));
    }

    /// A host file at `guest`, with its permission bits.
    fn host_file(&mut self, host: &Path, guest: &str) -> anyhow::Result<()> {
        let meta = fs::metadata(host).with_context(|| format!("reading {}", host.display()))?;
        ensure!(meta.is_file(), "{} is not a regular file", host.display());
        let mode = meta.permissions().mode() & 0o7777;
        self.add(Entry::file(guest, mode, Contents::Host(host.to_owned())));
        Ok(())
    }

    /// Members in an order where every directory precedes what it holds.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }
}

/// What every kernel's initramfs holds.
#[derive(Debug, Clone)]
pub struct Base {
    tree: Tree,
}

impl Base {
    pub fn new(payload: &Payload) -> anyhow::Result<Self> {
        let mut tree = Tree::default();
        for dir in [
            "dev",
            "proc",
            "sys",
            "run",
            "tmp",
            "root",
            "etc",
            "usr/libexec/busybox",
        ] {
            tree.add(Entry::dir(dir));
        }
        // The kernel opens the initial console before /init runs, from the archive itself.
        tree.add(Entry::char_device("dev/console", 0o600, 5, 1));
        let busybox = match &payload.userland {
            None => busybox()?,
            Some(u) => u.busybox()?,
        };
        tree.host_file(&busybox, "bin/busybox")?;
        tree.add(Entry::symlink("bin/sh", "busybox"));
        tree.text("etc/passwd", 0o644, PASSWD);
        tree.text("etc/group", 0o644, GROUP);
        tree.text("etc/hosts", 0o644, HOSTS);
        tree.text("etc/hostname", 0o644, "ta-matrix\n");
        tree.text("etc/nsswitch.conf", 0o644, NSSWITCH);
        for table in HOST_TABLES {
            if Path::new(table).is_file() {
                tree.host_file(Path::new(table), table)?;
            }
        }
        for name in &payload.host_binaries {
            let (binary, guest, libraries) = match &payload.userland {
                None => {
                    let binary = find_binary(name)
                        .with_context(|| format!("host binary {name:?} is not installed"))?;
                    let guest = binary.to_string_lossy().into_owned();
                    let libraries = shared_libraries(&binary)?
                        .into_iter()
                        .map(|l| (PathBuf::from(&l), l))
                        .collect();
                    (binary, guest, libraries)
                }
                Some(u) => {
                    let (binary, guest) = u.find(name)?;
                    let libraries = u.libraries(&binary)?;
                    (binary, guest, libraries)
                }
            };
            tree.host_file(&binary, &guest)?;
            for (host, guest) in libraries {
                tree.host_file(&host, &guest)?;
            }
        }
        for (host, guest) in &payload.files {
            ensure!(
                guest.starts_with('/'),
                "guest path {guest:?} is not absolute"
            );
            tree.host_file(host, guest)?;
        }
        ensure!(!payload.command.is_empty(), "the payload has no command");
        tree.text(COMMAND, 0o755, &command_script(&payload.command));
        Ok(Self { tree })
    }
}

/// One kernel's initramfs at `path`: `base`, the modules (in load order) and an /init that
/// loads them. Returns the bytes written. Uncompressed: under software emulation the kernel
/// reaches /init 1 to 2.5 s later from a gzip -1 archive (inflating 19 MB costs more than
/// copying 44 MB).
pub fn write(
    path: &Path,
    base: &Base,
    modules: &[(String, PathBuf)],
    skipped: &[(String, &str)],
) -> anyhow::Result<u64> {
    let mut tree = base.tree.clone();
    for (name, file) in modules {
        tree.host_file(file, &format!("{MODULES}/{name}.ko"))?;
    }
    let names: Vec<String> = modules.iter().map(|(n, _)| n.clone()).collect();
    tree.text("init", 0o755, &init_script(&names, skipped));
    let entries: Vec<Entry> = tree.entries().cloned().collect();
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let written = cpio::write(&mut out, &entries)
        .and_then(|n| out.flush().map(|()| n))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(written)
}

fn busybox() -> anyhow::Result<PathBuf> {
    let path = BUSYBOX
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("no busybox: cargo xtask setup installs busybox-static")?;
    // ldd fails on a static binary; a dynamic busybox (Debian's `busybox`) would need libc.
    let dynamic = Command::new("ldd")
        .arg(&path)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ensure!(
        !dynamic,
        "{} is dynamically linked: install busybox-static",
        path.display()
    );
    Ok(path)
}

/// Another architecture's userland for the VMs: a tree unpacked from Debian's packages for it
/// (fetch.rs), and the qemu-user emulator that runs its programs on this machine, so that its
/// own loader lists their libraries as `ldd` does for the host's.
#[derive(Debug, Clone)]
pub struct Userland {
    pub root: PathBuf,
    /// `qemu-aarch64` (Debian's qemu-user).
    pub qemu: &'static str,
}

impl Userland {
    fn busybox(&self) -> anyhow::Result<PathBuf> {
        BUSYBOX
            .iter()
            .map(|b| self.root.join(b.trim_start_matches('/')))
            .find(|p| p.is_file())
            .with_context(|| format!("no busybox in {}", self.root.display()))
    }

    /// `name` in the tree's program directories: its path here and in the guest.
    fn find(&self, name: &str) -> anyhow::Result<(PathBuf, String)> {
        HOST_DIRS
            .iter()
            .map(|d| (self.root.join(d.trim_start_matches('/')).join(name), d))
            .find(|(p, _)| p.is_file())
            .map(|(p, d)| (p, format!("{d}/{name}")))
            .with_context(|| format!("no {name} in {}", self.root.display()))
    }

    /// The libraries and interpreter `binary` loads, as the tree's own loader finds them
    /// (glibc's loader lists them, as for `ldd`, when LD_TRACE_LOADED_OBJECTS is set): their
    /// paths here and in the guest.
    fn libraries(&self, binary: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
        let out = Command::new(self.qemu)
            .arg("-L")
            .arg(&self.root)
            .args(["-E", "LD_TRACE_LOADED_OBJECTS=1"])
            .arg(binary)
            .output()
            .with_context(|| format!("running {} (Debian's qemu-user)", self.qemu))?;
        ensure!(
            out.status.success(),
            "listing the libraries of {} under {} failed: {}",
            binary.display(),
            self.qemu,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let guest = parse_ldd(&String::from_utf8_lossy(&out.stdout))
            .with_context(|| format!("the libraries of {}", binary.display()))?;
        Ok(guest
            .into_iter()
            .map(|g| (self.root.join(g.trim_start_matches('/')), g))
            .collect())
    }
}

fn find_binary(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name)).filter(|p| p.is_file());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(HOST_DIRS.iter().copied())
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The libraries and interpreter `ldd` reports for `binary`.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        // A static binary: nothing to add.
        return Ok(Vec::new());
    }
    parse_ldd(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("ldd {}", binary.display()))
}

/// Paths in `ldd` output: `libc.so.6 => /lib/.../libc.so.6 (0x...)` and the interpreter
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
pub fn parse_ldd(text: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((lib, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    bail!("{} is not found", lib.trim());
                }
                target
            }
            None => line,
        };
        let path = target.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') && !out.iter().any(|p| p == path) {
            out.push(path.to_owned());
        }
    }
    Ok(out)
}

/// A word as a POSIX shell reads it back unchanged.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn command_script(command: &[String]) -> String {
    let words: Vec<String> = command.iter().map(|w| shell_quote(w)).collect();
    format!("#!/bin/sh\nexec {}\n", words.join(" "))
}

/// The VM's /init: mounts, cgroup2 alone with its controllers enabled, modules, the payload,
/// its exit code, power off. `skipped` are wanted modules with no file to load and why
/// ("builtin", "absent").
pub fn init_script(modules: &[String], skipped: &[(String, &str)]) -> String {
    let mut s = format!(
        r#"#!/bin/sh
# Generated by `cargo xtask kernel-matrix` (xtask/src/matrix/initramfs.rs).
export PATH={PATH}:{APPLETS} HOME=/root TERM=dumb
/bin/busybox --install -s {APPLETS}
mount -t proc proc /proc
echo "{init} uptime=$(cut -d' ' -f1 /proc/uptime) release=$(uname -r)"
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm /dev/pts && mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for c in cpu memory pids cpuset; do
  if grep -qw "$c" /sys/fs/cgroup/cgroup.controllers; then
    echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control
  fi
done
echo "{cgroup} $(cat /sys/fs/cgroup/cgroup.subtree_control)"
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf
hostname ta-matrix
ip link set lo up 2>/dev/null || /bin/busybox ip link set lo up
"#,
        init = console::INIT,
        cgroup = console::CGROUP,
    );
    for (name, why) in skipped {
        s.push_str(&format!("echo '{} {name} {why}'\n", console::MODULE));
    }
    if !modules.is_empty() {
        s.push_str(&format!(
            r#"for m in {names}; do
  if err=$(insmod {MODULES}/$m.ko 2>&1); then
    echo "{marker} $m loaded"
  else
    echo "{marker} $m failed $err"
  fi
done
"#,
            names = modules.join(" "),
            marker = console::MODULE,
        ));
    }
    s.push_str(&format!(
        r#"cd /
sh {COMMAND}
code=$?
echo "{exit} $code"
if [ "$code" != 0 ]; then
  echo {dmesg}-BEGIN; dmesg; echo {dmesg}-END
fi
sync
poweroff -f
"#,
        exit = console::EXIT,
        dmesg = console::DMESG,
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_paths_include_the_interpreter_and_skip_the_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                    \tlibnftables.so.1 => /lib/x86_64-linux-gnu/libnftables.so.1 (0x00007f31)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f31)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f31)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f31)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libnftables.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        let missing = "\tlibfoo.so.1 => not found\n";
        assert!(
            parse_ldd(missing)
                .unwrap_err()
                .to_string()
                .contains("libfoo.so.1")
        );
    }

    #[test]
    fn commands_are_quoted_for_the_guest_shell() {
        assert_eq!(shell_quote("--version"), "--version");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(
            command_script(&["sh".into(), "-c".into(), "ip link && echo $X".into()]),
            "#!/bin/sh\nexec sh -c 'ip link && echo $X'\n"
        );
    }

    #[test]
    fn parents_come_before_children() {
        let mut tree = Tree::default();
        tree.text("usr/lib/x/libc.so", 0o644, "");
        tree.add(Entry::dir("usr"));
        tree.text("init", 0o755, "");
        let paths: Vec<&str> = tree.entries().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["init", "usr", "usr/lib", "usr/lib/x", "usr/lib/x/libc.so"]
        );
    }

    #[test]
    fn init_loads_modules_in_order_and_reports_the_exit_code() {
        let script = init_script(
            &["llc".into(), "stp".into(), "bridge".into()],
            &[("ipv6".into(), "builtin")],
        );
        assert!(script.contains("for m in llc stp bridge; do"));
        assert!(script.contains("echo 'TA-MATRIX-MODULE ipv6 builtin'"));
        assert!(script.contains("mount -t cgroup2 cgroup2 /sys/fs/cgroup"));
        assert!(!script.contains("-t cgroup "), "no cgroup v1 mount");
        let run = script.find("sh /etc/ta-matrix/command").unwrap();
        let exit = script.find("TA-MATRIX-EXIT $code").unwrap();
        let off = script.find("poweroff -f").unwrap();
        assert!(run < exit && exit < off);
    }
}
