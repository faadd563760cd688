//! Python tool sandbox (issue 5): runs agent-written Python in a locked-down subprocess (Linux only).
//!
//! [`run_python`] writes the code to `<workdir>/.mappa_tool_<n>.py` and runs
//! `<python> -I -B -u <script>` with cwd = `workdir`, stdin = /dev/null and stdout/stderr captured by two
//! threads that keep the first [`SandboxConfig::output_limit`] bytes of each stream and drain (discard) the rest,
//! so a script printing forever neither blocks nor fills memory. The script file is removed after the run.
//!
//! # Protections, and how they degrade
//!
//! Always (any uid, any kernel):
//! - **Isolated interpreter**: `-I` (ignores `PYTHON*` variables and user site-packages, does not put the
//!   script's directory on `sys.path`), `-B` (no `.pyc` files), `-u` (unbuffered, so output printed before a
//!   kill is kept). Because `-I` ignores `PYTHON*` variables, `PYTHONHASHSEED=0` in the environment has no
//!   effect: string hashing stays randomised.
//! - **Clean environment**: `env_clear()`, then only `PATH` (the interpreter's directory, `/usr/local/bin`,
//!   `/usr/bin`, `/bin`), `HOME` = `TMPDIR` = workdir, `LANG` = `LC_ALL` = `C.UTF-8`,
//!   `PYTHONDONTWRITEBYTECODE=1`, `PYTHONHASHSEED=0`. Nothing of the parent's environment (API keys) leaks.
//! - **Process group + wall-clock timeout**: `setsid()` in the child; on timeout the whole group gets SIGKILL;
//!   after *every* run (timeout or not) the group is SIGKILLed again to reap leftovers, before the main child is
//!   reaped (so its pid, which is the group id, cannot be recycled in between).
//! - **rlimits**: `RLIMIT_CPU` (soft = `cpu_seconds`, SIGXCPU; hard = +1 s, SIGKILL), `RLIMIT_AS`
//!   (`memory_bytes`: big allocations raise `MemoryError`), `RLIMIT_FSIZE` (`file_size_bytes`: Python ignores
//!   SIGXFSZ, so oversized writes raise `OSError: [Errno 27] File too large`), `RLIMIT_NPROC`
//!   (`max_processes`, counts threads too), `RLIMIT_CORE` = 0. They are set after the namespaces are made.
//! - Inherited file descriptors >= 3 are closed at exec (`close_range(CLOSE_RANGE_CLOEXEC)`),
//!   `PR_SET_NO_NEW_PRIVS` (set-uid binaries cannot regain privileges), `PR_SET_PDEATHSIG` = SIGKILL.
//!
//! When the host runs as **root** (this project's machines and CI):
//! - **Unprivileged, unique uid per run**: the child drops to uid = gid = a fresh id in
//!   `1_600_000_000..2_700_000_000` (no supplementary groups). The workdir tree is `lchown`ed to it first (only
//!   directories, symlinks and files with one hard link, never crossing file systems; the workdir itself becomes
//!   mode 0700, so concurrent sandboxes cannot read each other's directories). As the code no longer runs as
//!   root, `RLIMIT_NPROC` is enforced, and it counts only this run's processes. After every
//!   run a helper forked with that uid calls `kill(-1, SIGKILL)`, which kills *every* process of the run, even
//!   ones that left the process group (`setsid`, double fork); [`ToolOutput::isolation`] reports the uid so
//!   callers can verify that none is left.
//! - **Private mount namespace** (`unshare(CLONE_NEWNS)`, mounts made recursively private): `/root` is covered
//!   by an empty read-only tmpfs (root's home, keys and configs become invisible); the interpreter's
//!   directories (`sys.prefix`, `sys.base_prefix`, ... e.g. a pyenv build under `/root/.pyenv`) and the
//!   workdir, when they live under `/root`, are bind-mounted back at their own paths; the workdir is
//!   bind-mounted onto itself read-write (nosuid, nodev); then *every other mount* (`/`, `/tmp` as part of
//!   `/`, `/dev/shm`, `/dev`, `/proc`, `/sys`, cgroup fs, ...) is remounted read-only in the namespace. So
//!   writes anywhere but the workdir fail with `EROFS` or `EACCES`, including the world-writable `/tmp`,
//!   `/var/tmp` and `/dev/shm`. (`/dev/null` still works: device I/O is not blocked by a read-only mount.)
//! - **No network**: `unshare(CLONE_NEWNET)` (a fresh namespace with only a down loopback: every connect, even
//!   to 127.0.0.1, fails), plus `CLONE_NEWIPC` and `CLONE_NEWUTS`.
//!
//! When the host is **not root** (best effort; on this machine the whole test suite also passes when run as
//! uid 65534 with `/usr/bin/python3`, but the suite normally runs as root):
//! `unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | ...)` with the caller's uid/gid mapped to themselves;
//! when the kernel allows it, the network and the read-only remounts apply as above (locked mount flags are
//! preserved); `/root` is not hidden and there is no uid change. Then `unshare(CLONE_NEWPID)`: the spawned
//! process forks a minimal init (PID 1 of the new PID namespace) and the code (PID 2), and waits. When the code
//! ends, the waiter kills the init, so the kernel kills every process left in the namespace (`setsid`, double
//! forks and ignored signals do not help), and the waiter ends as the code did (same exit status, or the same
//! signal re-raised) only once the namespace is empty. On a timeout the group kill reaches all three, and the
//! namespace dies with its init. The code can signal only its namespace's processes (the host's `/proc` stays
//! readable); `RLIMIT_NPROC` counts the run's user namespace (raised by 2 for the waiter and the init), not all
//! of the user's processes. [`Isolation::pid_namespace`] says whether this applied: without user namespaces (or
//! `close_range`, Linux 5.9) there is none, `RLIMIT_NPROC` counts all of the user's processes, and processes
//! that leave the process group can survive the run.
//!
//! Degradation is never silent: each step that the kernel refuses is skipped (the run still happens, with the
//! remaining protections), and [`ToolOutput::isolation`] says what actually applied to that run;
//! [`network_isolated`] probes once whether a network namespace can be created at all. Failures that would
//! leave the run *less* safe than expected by construction (cannot `setsid`, `chdir`, drop the uid when root,
//! or fork the init and the code once the PID namespace exists) abort the spawn and return `Err`.
//!
//! Run at most one sandbox at a time per workdir (each run re-owns the tree to its own uid). Under `-I` the
//! workdir is not on `sys.path`, so the code cannot `import` modules it wrote there unless it adds the path.
//!
//! Not covered: reads (the code can read whatever the sandbox uid may read, e.g. world-readable files such as
//! the repository), CPU share between concurrent runs, disk space beyond the per-file limit, seccomp filtering.
//! Landlock is not used (no `/sys/kernel/security/lsm` on this kernel).

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Limits and the interpreter of one sandboxed run.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Interpreter: a name looked up in the host's `PATH` (pyenv shims are resolved to the real binary) or a path.
    pub python: PathBuf,
    /// Wall-clock limit; on expiry the whole process group is killed.
    pub timeout: Duration,
    /// CPU seconds (`RLIMIT_CPU`, per process): SIGXCPU at the limit, SIGKILL one second later.
    pub cpu_seconds: u64,
    /// Address space per process (`RLIMIT_AS`).
    pub memory_bytes: u64,
    /// Largest file the code may write (`RLIMIT_FSIZE`).
    pub file_size_bytes: u64,
    /// Processes + threads (`RLIMIT_NPROC`); enforced per run when the host is root (a fresh uid per run).
    pub max_processes: u64,
    /// Bytes of stdout, and separately of stderr, that are kept.
    pub output_limit: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            python: PathBuf::from("python3"),
            timeout: Duration::from_secs(10),
            cpu_seconds: 10,
            memory_bytes: 2 << 30,
            file_size_bytes: 64 << 20,
            max_processes: 64,
            output_limit: 8 << 10,
        }
    }
}

/// How the code ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exited by itself with this status.
    Exited(i32),
    /// Killed by the sandbox because the wall-clock limit passed.
    Timeout,
    /// Killed by this signal (its own doing, or an rlimit: SIGXCPU / SIGKILL for CPU time).
    Signaled(i32),
}

/// Which protections applied to a run (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Isolation {
    /// Ran in a fresh network namespace (no network, not even loopback).
    pub network: bool,
    /// Private mount namespace with everything but the workdir read-only.
    pub filesystem: bool,
    /// `/root` covered by an empty tmpfs.
    pub home_hidden: bool,
    /// The uid the code ran as when the host is root and dropped to a per-run uid.
    pub sandbox_uid: Option<u32>,
    /// Ran in a fresh PID namespace that is emptied before the run ends (non-root hosts; as root the per-run uid
    /// does that job): nothing the code started outlives it, and the code can signal only its own processes.
    pub pid_namespace: bool,
}

/// What a sandboxed run produced.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// The first `output_limit` bytes of stdout (lossy UTF-8; a multi-byte character cut at the limit is dropped).
    pub stdout: String,
    /// The first `output_limit` bytes of stderr.
    pub stderr: String,
    pub outcome: Outcome,
    /// Either stream was longer than `output_limit`.
    pub truncated: bool,
    /// Bytes the code wrote to stdout / stderr in all (kept or not).
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// The limit the streams were cut to.
    pub output_limit: usize,
    /// Wall time from spawn to the end of clean-up.
    pub elapsed: Duration,
    /// The wall-clock limit the run had (for the timeout note).
    pub timeout: Duration,
    pub isolation: Isolation,
}

/// How a rendered tool output marks a run that failed (the rule coach looks for it).
pub const TOOL_ERROR: &str = "[tool error:";

/// How a tool output starts when the sandbox itself failed on the host (the run counts these).
pub const HOST_FAILURE: &str = "[tool error: the sandbox failed on the host:";

/// The tool output of an action whose code could not be run because [`run_python`] failed on the host.
pub fn host_failure(err: &anyhow::Error) -> String {
    format!("{HOST_FAILURE} {}]\n", format!("{err:#}").replace('\n', " "))
}

impl ToolOutput {
    /// The text an agent sees next turn: stdout, then stderr, then one-line notes on truncation and errors.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for part in [&self.stdout, &self.stderr] {
            if !part.is_empty() {
                s.push_str(part);
                if !part.ends_with('\n') {
                    s.push('\n');
                }
            }
        }
        for (name, n) in [("stdout", self.stdout_bytes), ("stderr", self.stderr_bytes)] {
            if n > self.output_limit as u64 {
                s.push_str(&format!("[{name} truncated to {} bytes of {n}]\n", self.output_limit));
            }
        }
        match self.outcome {
            Outcome::Exited(0) => {}
            Outcome::Exited(c) => s.push_str(&format!("{TOOL_ERROR} exited with status {c}]\n")),
            Outcome::Timeout => s.push_str(&format!("{TOOL_ERROR} timed out after {}]\n", fmt_secs(self.timeout))),
            Outcome::Signaled(sig) => {
                s.push_str(&format!("{TOOL_ERROR} killed by signal {sig} ({})]\n", signal_name(sig)))
            }
        }
        if s.is_empty() {
            s.push_str("[no output]\n");
        }
        s
    }

    /// True unless the code exited with status 0.
    pub fn is_error(&self) -> bool {
        self.outcome != Outcome::Exited(0)
    }
}

fn fmt_secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU, CPU time limit exceeded",
        libc::SIGXFSZ => "SIGXFSZ, file size limit exceeded",
        _ => "unknown signal",
    }
}

/// Whether this host can give a child its own network namespace (probed once). Each run's
/// [`ToolOutput::isolation`] says what applied to that run.
pub fn network_isolated() -> bool {
    static NET: OnceLock<bool> = OnceLock::new();
    *NET.get_or_init(|| {
        let flags =
            if unsafe { libc::geteuid() } == 0 { libc::CLONE_NEWNET } else { libc::CLONE_NEWUSER | libc::CLONE_NEWNET };
        // SAFETY: the child only makes raw syscalls and _exits.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                let r = libc::unshare(flags);
                libc::_exit(if r == 0 { 0 } else { 1 });
            }
            if pid < 0 {
                return false;
            }
            let mut st = 0;
            while libc::waitpid(pid, &mut st, 0) < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {
            }
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0
        }
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Interpreter discovery.

#[derive(Debug, Clone)]
struct PyInfo {
    /// `sys.executable` (not resolved: a venv is found through it).
    exe: PathBuf,
    /// Directories the interpreter needs (prefixes, the real binary's directory), outermost only.
    keep: Vec<PathBuf>,
}

const PROBE: &str = "import os, sys\nfor p in (sys.executable, os.path.dirname(os.path.realpath(sys.executable)), \
sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix): print(p)\n";

fn python_info(python: &Path) -> Result<PyInfo> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, PyInfo>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(info) = cache.lock().unwrap().get(python) {
        return Ok(info.clone());
    }
    // The host's own interpreter choice, run once unsandboxed with trusted code.
    let out = Command::new(python)
        .args(["-I", "-c", PROBE])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("sandbox: cannot run the interpreter {}", python.display()))?;
    if !out.status.success() {
        bail!("sandbox: {} failed to start: {}", python.display(), String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout).context("sandbox: interpreter paths are not UTF-8")?;
    let lines: Vec<PathBuf> = text.lines().map(PathBuf::from).collect();
    if lines.len() != 6 || !lines.iter().all(|p| p.is_absolute()) {
        bail!("sandbox: unexpected answer from {}: {text:?}", python.display());
    }
    let exe = lines[0].clone();
    let mut dirs: Vec<PathBuf> = lines[1..].iter().filter_map(|p| fs::canonicalize(p).ok()).collect();
    if let Some(parent) = exe.parent() {
        dirs.push(parent.to_path_buf());
    }
    dirs.sort();
    dirs.dedup();
    let keep: Vec<PathBuf> =
        dirs.iter().filter(|d| !dirs.iter().any(|o| o != *d && d.starts_with(o))).cloned().collect();
    let info = PyInfo { exe, keep };
    cache.lock().unwrap().insert(python.to_path_buf(), info.clone());
    Ok(info)
}

// ---------------------------------------------------------------------------------------------------------------
// The child's setup, all prepared in the parent so that `pre_exec` does not allocate.

const REPORT_NET: u32 = 1;
const REPORT_FS: u32 = 2;
const REPORT_HOME: u32 = 4;
const REPORT_DONE: u32 = 8;
const REPORT_PID: u32 = 16;

struct Plan {
    as_root: bool,
    uid: u32,
    gid: u32,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t)>,
    /// Non-root: (path, content) written after `unshare(CLONE_NEWUSER)`.
    id_maps: Vec<(CString, Vec<u8>)>,
    hide_root: bool,
    root_dir: CString,
    tmpfs: CString,
    tmpfs_opts: CString,
    mkdirs: Vec<CString>,
    /// Directories under /root bound back at their own paths after the tmpfs covers /root.
    keep_binds: Vec<CString>,
    workdir: CString,
    workdir_flags: libc::c_ulong,
    /// Mount points to make read-only, with the flags to keep ("/" first).
    remounts: Vec<(CString, libc::c_ulong)>,
    /// The /root tmpfs and its binds, made read-only when the tmpfs went up.
    hidden_remounts: Vec<(CString, libc::c_ulong)>,
    slash: CString,
    report_fd: libc::c_int,
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("sandbox: path contains a NUL byte")
}

/// Mount flags of the mount holding `p`, as `MS_*` bits to keep on a bind remount.
fn mount_flags(p: &Path) -> libc::c_ulong {
    let Ok(c) = cstr(p) else { return 0 };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    let f = st.f_flag as libc::c_ulong;
    let mut m = 0;
    for (st_bit, ms_bit) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f & st_bit as libc::c_ulong != 0 {
            m |= ms_bit;
        }
    }
    m
}

/// Mount points of this process (`/proc/self/mountinfo`, field 5, octal escapes decoded), deduplicated.
fn mount_points() -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = Vec::new();
    for line in text.lines() {
        let Some(raw) = line.split(' ').nth(4) else { continue };
        let b = raw.as_bytes();
        let mut dec = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
                dec.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
                i += 4;
            } else {
                dec.push(b[i]);
                i += 1;
            }
        }
        let p = PathBuf::from(std::ffi::OsStr::from_bytes(&dec));
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

fn next_uid() -> u32 {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) & 0xffff;
    1_600_000_000 + ((std::process::id() & 0x3fff) << 16) + seq
}

/// `lchown` the workdir tree to the sandbox uid (directories, symlinks, singly-linked files; one file system).
fn chown_tree(root: &Path, uid: u32) -> Result<()> {
    let dev = fs::symlink_metadata(root)?.dev();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = fs::symlink_metadata(&p) else { continue };
        if md.dev() != dev {
            continue;
        }
        let ft = md.file_type();
        if ft.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        } else if !ft.is_symlink() && md.nlink() > 1 {
            continue; // might be a hard link to a file outside: never hand it over
        }
        if md.uid() != uid || md.gid() != uid {
            std::os::unix::fs::lchown(&p, Some(uid), Some(uid))
                .with_context(|| format!("sandbox: cannot chown {}", p.display()))?;
        }
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Kill every process that runs as `uid` (a helper with that uid calls `kill(-1, SIGKILL)`; the kernel walks
/// the process list under a lock that also blocks `fork`, so nothing escapes), then wait until none is left.
fn sweep_uid(uid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // SAFETY: the child makes raw syscalls only, then _exits.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                let u = uid as libc::c_long;
                if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
                    && libc::syscall(libc::SYS_setresgid, u, u, u) == 0
                    && libc::syscall(libc::SYS_setresuid, u, u, u) == 0
                {
                    libc::kill(-1, libc::SIGKILL);
                }
                libc::_exit(0);
            }
            if pid > 0 {
                let mut st = 0;
                while libc::waitpid(pid, &mut st, 0) < 0
                    && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
                {}
            }
        }
        if live_processes_of_uid(uid) == 0 || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Number of live (non-zombie) processes whose real uid is `uid` (from `/proc`). Public for tests and callers
/// that want to check that a run left nothing behind (see [`Isolation::sandbox_uid`]).
pub fn live_processes_of_uid(uid: u32) -> usize {
    let Ok(rd) = fs::read_dir("/proc") else { return 0 };
    let mut n = 0;
    for e in rd.filter_map(|e| e.ok()) {
        if !e.file_name().as_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let Ok(status) = fs::read_to_string(e.path().join("status")) else { continue };
        let mut zombie = false;
        let mut mine = false;
        for l in status.lines() {
            if let Some(s) = l.strip_prefix("State:") {
                zombie = s.trim_start().starts_with('Z') || s.trim_start().starts_with('X');
            } else if let Some(s) = l.strip_prefix("Uid:") {
                mine = s.split_whitespace().next() == Some(uid.to_string().as_str());
            }
        }
        if mine && !zombie {
            n += 1;
        }
    }
    n
}

const MAX_KEEP: usize = 8;

/// `mount --bind /proc/self/fd/<fd> <dst>`, formatting the path on the stack (async-signal-safe).
unsafe fn bind_fd(fd: libc::c_int, dst: &CString) -> bool {
    if fd < 0 {
        return false;
    }
    let mut buf = [0u8; 40];
    let prefix = b"/proc/self/fd/";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let (mut n, mut k) = (fd as u32, 0);
    loop {
        digits[k] = b'0' + (n % 10) as u8;
        k += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for j in 0..k {
        buf[prefix.len() + j] = digits[k - 1 - j];
    }
    libc::mount(buf.as_ptr().cast(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null())
        == 0
}

/// Runs in the forked child between fork and exec: raw syscalls on prepared data only (no allocation).
fn child_setup(plan: &Plan) -> io::Result<()> {
    unsafe {
        if libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        // Inherited descriptors >= 3 close at exec (CLOSE_RANGE_CLOEXEC = 4); ours stay usable until then.
        let close_range =
            libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, 4 as libc::c_uint) == 0;
        let mut report = 0u32;
        let common = libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
        let (mut ns, mut net, mut pid_ns) = (false, false, false);
        if plan.as_root {
            if libc::unshare(common) == 0 {
                (ns, net) = (true, true);
            } else {
                net = libc::unshare(libc::CLONE_NEWNET) == 0;
                ns = libc::unshare(libc::CLONE_NEWNS) == 0;
            }
        } else {
            let mut user = false;
            if libc::unshare(libc::CLONE_NEWUSER | common) == 0 {
                (user, ns, net) = (true, true, true);
            } else if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) == 0 {
                (user, net) = (true, true);
            }
            if user {
                for (path, content) in &plan.id_maps {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd >= 0 {
                        libc::write(fd, content.as_ptr().cast(), content.len());
                        libc::close(fd);
                    }
                }
                // The waiter and the init of `enter_pid_ns` must close every descriptor (close_range, Linux 5.9+).
                pid_ns = close_range && libc::unshare(libc::CLONE_NEWPID) == 0;
            }
        }
        if net {
            report |= REPORT_NET;
        }
        if ns
            && libc::mount(
                std::ptr::null(),
                plan.slash.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) == 0
        {
            // Sources are opened inside the new namespace (a bind from another namespace's mount is EINVAL)
            // and before the tmpfs hides them; `keep_fds` is a fixed array, so no allocation.
            let mut keep_fds = [-1 as libc::c_int; MAX_KEEP];
            let wd_fd = libc::open(plan.workdir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
            let mut hidden = false;
            if plan.hide_root {
                for (i, k) in plan.keep_binds.iter().enumerate().take(MAX_KEEP) {
                    keep_fds[i] = libc::open(k.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
                }
            }
            if plan.hide_root
                && libc::mount(
                    plan.tmpfs.as_ptr(),
                    plan.root_dir.as_ptr(),
                    plan.tmpfs.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    plan.tmpfs_opts.as_ptr().cast(),
                ) == 0
            {
                hidden = true;
                for d in &plan.mkdirs {
                    libc::mkdir(d.as_ptr(), 0o755);
                }
                for (i, dst) in plan.keep_binds.iter().enumerate().take(MAX_KEEP) {
                    bind_fd(keep_fds[i], dst);
                }
                report |= REPORT_HOME;
            }
            let wd_ok = bind_fd(wd_fd, &plan.workdir);
            if wd_ok {
                libc::mount(
                    std::ptr::null(),
                    plan.workdir.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | plan.workdir_flags,
                    std::ptr::null(),
                );
                let mut slash_ro = false;
                for (i, (mp, keep)) in plan.remounts.iter().enumerate() {
                    let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | keep;
                    let r = libc::mount(std::ptr::null(), mp.as_ptr(), std::ptr::null(), flags, std::ptr::null());
                    if i == 0 && r == 0 {
                        slash_ro = true;
                    }
                }
                if hidden {
                    for (mp, keep) in &plan.hidden_remounts {
                        let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | keep;
                        libc::mount(std::ptr::null(), mp.as_ptr(), std::ptr::null(), flags, std::ptr::null());
                    }
                }
                if slash_ro {
                    report |= REPORT_FS;
                }
            }
        }
        if libc::chdir(plan.workdir.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        // After the unshare: a user namespace then counts RLIMIT_NPROC per run (its own processes), not per user.
        for &(res, soft, hard) in &plan.rlimits {
            // The waiter and the init of a PID namespace count too: the code still gets `max_processes`.
            let extra = if res == libc::RLIMIT_NPROC && pid_ns { 2 } else { 0 };
            let lim = libc::rlimit { rlim_cur: soft.saturating_add(extra), rlim_max: hard.saturating_add(extra) };
            if libc::setrlimit(res, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if plan.as_root {
            let (u, g) = (plan.uid as libc::c_long, plan.gid as libc::c_long);
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setresgid, g, g, g) != 0
                || libc::syscall(libc::SYS_setresuid, u, u, u) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if pid_ns {
            enter_pid_ns()?;
            report |= REPORT_PID;
        }
        report |= REPORT_DONE;
        let bytes = report.to_ne_bytes();
        libc::write(plan.report_fd, bytes.as_ptr().cast(), 4);
    }
    Ok(())
}

/// After `unshare(CLONE_NEWPID)`, which puts only the caller's later children in the new PID namespace: forks
/// the namespace's PID 1, a minimal init, then the process that returns (only it) to exec the code as PID 2, and
/// turns the caller into their waiter. The code is not PID 1 because the kernel shields a namespace's init from
/// signals sent inside it that it has no handler for: `os.kill(os.getpid(), SIGKILL)`, even an rlimit's SIGXCPU,
/// would be ignored. When the code ends the waiter kills the init, so the kernel kills everything left in the
/// namespace (whatever its session or signal dispositions); the waiter reaps its children until none is left (the
/// init is reaped only once the namespace is empty) and then ends as the code did. Raw syscalls only.
unsafe fn enter_pid_ns() -> io::Result<()> {
    let close_all = || libc::syscall(libc::SYS_close_range, 0 as libc::c_uint, libc::c_uint::MAX, 0 as libc::c_uint);
    let init = libc::fork();
    if init < 0 {
        return Err(io::Error::last_os_error());
    }
    if init == 0 {
        // Holds the namespace. Closing every descriptor releases the output pipes and std's exec-error pipe
        // (`Command::spawn` reads it to its end); ignoring SIGCHLD makes the kernel reap the orphans it inherits.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        close_all();
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
        loop {
            libc::pause();
        }
    }
    let code = libc::fork();
    if code < 0 {
        let err = io::Error::last_os_error();
        libc::kill(init, libc::SIGKILL);
        return Err(err);
    }
    if code == 0 {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        return Ok(());
    }
    close_all();
    let mut status = 0;
    loop {
        let mut st = 0;
        // Any child (__WALL): the code can make processes of the namespace children of this one (CLONE_PARENT),
        // and the init's exit waits until such zombies are reaped.
        let r = libc::waitpid(-1, &mut st, libc::__WALL);
        if r == code {
            status = st;
            libc::kill(init, libc::SIGKILL);
        } else if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break; // ECHILD: the code, the init and the whole namespace are gone
        }
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // A core_pattern pipe ignores RLIMIT_CORE = 0; a non-dumpable process is never dumped.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
        libc::_exit(128 + sig);
    }
    libc::_exit(libc::WEXITSTATUS(status))
}

// ---------------------------------------------------------------------------------------------------------------
// The run.

/// Reads a pipe to the end, keeping the first `limit` bytes; returns (kept, total).
fn reader(mut r: impl Read + Send + 'static, limit: usize) -> mpsc::Receiver<(Vec<u8>, u64)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    total += n as u64;
                    let room = limit.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = tx.send((kept, total));
    });
    rx
}

/// Lossy UTF-8; when the stream was cut, a multi-byte character split at the cut is dropped.
fn to_text(mut b: Vec<u8>, cut: bool) -> String {
    if cut {
        if let Err(e) = std::str::from_utf8(&b) {
            if e.error_len().is_none() {
                b.truncate(e.valid_up_to());
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// Runs `code` with the interpreter of `cfg` in `workdir` under the protections described in the module docs.
/// `Err` only for host-side failures (workdir missing, interpreter not found, cannot spawn); everything the code
/// does is an `Ok` with an [`Outcome`].
pub fn run_python(code: &str, workdir: &Path, cfg: &SandboxConfig) -> Result<ToolOutput> {
    let workdir =
        fs::canonicalize(workdir).with_context(|| format!("sandbox: workdir {} is missing", workdir.display()))?;
    if !workdir.is_dir() {
        bail!("sandbox: workdir {} is not a directory", workdir.display());
    }
    let py = python_info(&cfg.python)?;
    let as_root = unsafe { libc::geteuid() } == 0;
    let (uid, gid) = if as_root {
        let u = next_uid();
        (u, u)
    } else {
        unsafe { (libc::geteuid(), libc::getegid()) }
    };

    static SCRIPT_SEQ: AtomicU32 = AtomicU32::new(0);
    let script =
        workdir.join(format!(".mappa_tool_{}_{}.py", std::process::id(), SCRIPT_SEQ.fetch_add(1, Ordering::Relaxed)));
    fs::write(&script, code).with_context(|| format!("sandbox: cannot write {}", script.display()))?;
    let result = run_script(&script, &workdir, &py, cfg, as_root, uid, gid);
    let _ = fs::remove_file(&script);
    result
}

fn run_script(
    script: &Path,
    workdir: &Path,
    py: &PyInfo,
    cfg: &SandboxConfig,
    as_root: bool,
    uid: u32,
    gid: u32,
) -> Result<ToolOutput> {
    if as_root {
        chown_tree(workdir, uid)?;
    }
    let root_dir = Path::new("/root");
    let hide_root = as_root && root_dir.is_dir();
    let mut mkdirs: Vec<CString> = Vec::new();
    let mut keep_binds = Vec::new();
    let mut keep_targets: Vec<PathBuf> =
        py.keep.iter().filter(|p| p.starts_with(root_dir) && *p != root_dir).cloned().collect();
    if workdir.starts_with(root_dir) {
        if workdir == root_dir {
            bail!("sandbox: the workdir cannot be /root itself");
        }
        keep_targets.push(workdir.to_path_buf()); // needs a mount point inside the tmpfs
    }
    if hide_root {
        for t in &keep_targets {
            let mut acc = root_dir.to_path_buf();
            for comp in t.strip_prefix(root_dir).unwrap().components() {
                acc.push(comp);
                let c = cstr(&acc)?;
                if !mkdirs.contains(&c) {
                    mkdirs.push(c);
                }
            }
            if *t != workdir {
                keep_binds.push(cstr(t)?);
            }
        }
    }
    if keep_binds.len() > MAX_KEEP {
        bail!("sandbox: the interpreter needs more than {MAX_KEEP} directories under /root");
    }
    // "/" first (its success is what the report checks), the /root tmpfs and its binds last.
    let mut remounts: Vec<(CString, libc::c_ulong)> = vec![(CString::new("/").unwrap(), mount_flags(Path::new("/")))];
    for mp in mount_points() {
        if mp == Path::new("/") || mp.starts_with(workdir) || (hide_root && mp.starts_with(root_dir)) {
            continue;
        }
        remounts.push((cstr(&mp)?, mount_flags(&mp)));
    }
    let mut hidden_remounts = Vec::new();
    if hide_root {
        hidden_remounts.push((cstr(root_dir)?, libc::MS_NODEV));
        for dst in &keep_binds {
            let p = PathBuf::from(std::ffi::OsStr::from_bytes(dst.as_bytes()));
            hidden_remounts.push((dst.clone(), mount_flags(&p)));
        }
    }
    let mut pipe = [0; 2];
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("sandbox: pipe");
    }
    let (report_r, report_w) = unsafe { (fs::File::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    let euid = unsafe { libc::geteuid() };
    let egid = unsafe { libc::getegid() };
    let cpu = cfg.cpu_seconds.max(1);
    let plan = Plan {
        as_root,
        uid,
        gid,
        rlimits: vec![
            (libc::RLIMIT_CORE, 0, 0),
            (libc::RLIMIT_CPU, cpu, cpu + 1),
            (libc::RLIMIT_AS, cfg.memory_bytes, cfg.memory_bytes),
            (libc::RLIMIT_FSIZE, cfg.file_size_bytes, cfg.file_size_bytes),
            (libc::RLIMIT_NPROC, cfg.max_processes, cfg.max_processes),
        ],
        id_maps: vec![
            (CString::new("/proc/self/setgroups").unwrap(), b"deny".to_vec()),
            (CString::new("/proc/self/uid_map").unwrap(), format!("{euid} {euid} 1\n").into_bytes()),
            (CString::new("/proc/self/gid_map").unwrap(), format!("{egid} {egid} 1\n").into_bytes()),
        ],
        hide_root,
        root_dir: cstr(root_dir)?,
        tmpfs: CString::new("tmpfs").unwrap(),
        tmpfs_opts: CString::new("mode=0755,size=1m").unwrap(),
        mkdirs,
        keep_binds,
        workdir: cstr(workdir)?,
        workdir_flags: (mount_flags(workdir) & !libc::MS_RDONLY) | libc::MS_NOSUID | libc::MS_NODEV,
        remounts,
        hidden_remounts,
        slash: CString::new("/").unwrap(),
        report_fd: report_w.as_raw_fd(),
    };

    let path_var = {
        let mut v = String::new();
        if let Some(d) = py.exe.parent().and_then(|d| d.to_str()) {
            v.push_str(d);
            v.push(':');
        }
        v + "/usr/local/bin:/usr/bin:/bin"
    };
    let mut cmd = Command::new(&py.exe);
    cmd.arg("-I").arg("-B").arg("-u").arg(script);
    cmd.env_clear()
        .env("PATH", path_var)
        .env("HOME", workdir)
        .env("TMPDIR", workdir)
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONHASHSEED", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: child_setup only makes raw syscalls on data prepared above (owned by the closure).
    unsafe {
        cmd.pre_exec(move || child_setup(&plan));
    }
    let start = Instant::now();
    let spawned = cmd.spawn();
    drop(cmd);
    drop(report_w);
    let mut child = spawned.with_context(|| format!("sandbox: cannot start {}", py.exe.display()))?;
    let pid = child.id() as libc::pid_t;

    let mut report = [0u8; 4];
    let isolation = {
        let mut r = report_r;
        let bits = if r.read_exact(&mut report).is_ok() { u32::from_ne_bytes(report) } else { 0 };
        Isolation {
            network: bits & REPORT_NET != 0,
            filesystem: bits & REPORT_FS != 0,
            home_hidden: bits & REPORT_HOME != 0,
            pid_namespace: bits & REPORT_PID != 0,
            sandbox_uid: as_root.then_some(uid),
        }
    };
    let out_rx = reader(child.stdout.take().unwrap(), cfg.output_limit);
    let err_rx = reader(child.stderr.take().unwrap(), cfg.output_limit);

    // Wait for the exit without reaping (WNOWAIT): while the zombie exists its pid, the group id, stays ours.
    let mut timed_out = false;
    let mut nap = Duration::from_millis(1);
    loop {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
        };
        if r == 0 && unsafe { info.si_pid() } != 0 {
            break;
        }
        if r != 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break; // ECHILD cannot happen for our own child; do not spin
        }
        if start.elapsed() >= cfg.timeout {
            timed_out = true;
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
            break;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
    // Reap leftovers: the process group, then (as root) everything of the run's uid.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    if as_root {
        sweep_uid(uid);
    }
    let status = child.wait().context("sandbox: wait")?;
    // Pipes reach EOF once every holder is dead; a survivor (possible only when not root) must not hang us.
    let grace = Instant::now() + Duration::from_secs(2);
    let take = |rx: mpsc::Receiver<(Vec<u8>, u64)>| {
        rx.recv_timeout(grace.saturating_duration_since(Instant::now())).unwrap_or_default()
    };
    let (out, out_n) = take(out_rx);
    let (err, err_n) = take(err_rx);
    let limit = cfg.output_limit as u64;
    let outcome = if timed_out {
        Outcome::Timeout
    } else if let Some(c) = status.code() {
        Outcome::Exited(c)
    } else {
        Outcome::Signaled(status.signal().unwrap_or(0))
    };
    Ok(ToolOutput {
        stdout: to_text(out, out_n > limit),
        stderr: to_text(err, err_n > limit),
        outcome,
        truncated: out_n > limit || err_n > limit,
        stdout_bytes: out_n,
        stderr_bytes: err_n,
        output_limit: cfg.output_limit,
        elapsed: start.elapsed(),
        timeout: cfg.timeout,
        isolation,
    })
}
