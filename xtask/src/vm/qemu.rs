//! One qemu guest: started with `-accel tcg`, its serial console (ttyS0) written to a log file
//! the harness reads marker lines from, a command channel on ttyS1 (served in the guest by
//! `tests/vm/agent.sh`), and the human monitor on a unix socket for resets. Every qemu is killed
//! by PID when its [`Vm`] drops, when the harness is interrupted (see [`super::cleanup`]), and by
//! the kernel if the harness itself dies (`PR_SET_PDEATHSIG`).

use std::{
    io::{Read as _, Write as _},
    os::unix::{net::UnixStream, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::cleanup;

/// How the guest boots.
#[derive(Clone, Debug)]
pub enum Boot {
    /// qemu loads the kernel and initramfs itself (fast: no firmware, no bootloader).
    Direct {
        kernel: PathBuf,
        initramfs: PathBuf,
        cmdline: String,
    },
    /// UEFI firmware boots a disk image (the harness's own copy: boot counting writes to it).
    Uefi { firmware: PathBuf, disk: PathBuf },
}

/// Everything needed to start one guest.
#[derive(Clone, Debug)]
pub struct QemuSpec {
    pub name: String,
    pub boot: Boot,
    pub memory_mib: u32,
    /// `-netdev` arguments (see [`super::wire::PortPaths::qemu_netdev`]) with the NIC's MAC.
    pub nics: Vec<(String, String)>,
    /// fw_cfg entries: (name, file).
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// More raw virtio disks, read-only (after the boot disk).
    pub extra_drives: Vec<PathBuf>,
    /// Where the console log goes.
    pub console_log: PathBuf,
    /// Directory for the guest's unix sockets (short path: sockaddr_un holds 108 bytes).
    pub socket_dir: PathBuf,
}

/// Lines that end a wait at once, unless the wait is for them: the guest cannot get better.
const FATAL_MARKERS: &[&str] = &["APPLIANCE-ERROR", "Kernel panic", "BAD-IMAGE"];

/// A running guest.
pub struct Vm {
    pub name: String,
    child: Child,
    pid: u32,
    started: Instant,
    console: Console,
    agent_path: PathBuf,
    agent: Option<UnixStream>,
    monitor_path: PathBuf,
    fatal_markers: &'static [&'static str],
    /// Console lines read so far (since start or the last reset).
    history: Vec<String>,
}

impl Vm {
    /// Starts qemu for `spec` (returns at once; the guest boots in the background).
    pub fn spawn(spec: &QemuSpec) -> anyhow::Result<Vm> {
        let agent_path = spec.socket_dir.join(format!("{}.agent", spec.name));
        let monitor_path = spec.socket_dir.join(format!("{}.monitor", spec.name));
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-accel", "tcg", "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-name", &spec.name])
            .args(["-m", &spec.memory_mib.to_string()])
            .arg("-chardev")
            .arg(format!(
                "file,id=console,path={}",
                spec.console_log.display()
            ))
            .args(["-serial", "chardev:console"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=agent,path={},server=on,wait=off",
                agent_path.display()
            ))
            .args(["-serial", "chardev:agent"])
            .arg("-monitor")
            .arg(format!(
                "unix:{},server=on,wait=off",
                monitor_path.display()
            ));
        match &spec.boot {
            Boot::Direct {
                kernel,
                initramfs,
                cmdline,
            } => {
                command
                    .arg("-kernel")
                    .arg(kernel)
                    .arg("-initrd")
                    .arg(initramfs)
                    .args(["-append", cmdline]);
            }
            Boot::Uefi { firmware, disk } => {
                command
                    .arg("-bios")
                    .arg(firmware)
                    .arg("-drive")
                    .arg(format!("file={},format=raw,if=virtio", disk.display()));
            }
        }
        for (index, (netdev, mac)) in spec.nics.iter().enumerate() {
            command
                .arg("-netdev")
                .arg(netdev)
                .arg("-device")
                .arg(format!("virtio-net-pci,netdev=n{index},mac={mac}"));
        }
        for drive in &spec.extra_drives {
            command.arg("-drive").arg(format!(
                "file={},format=raw,if=virtio,readonly=on",
                drive.display()
            ));
        }
        for (name, file) in &spec.fw_cfg {
            command
                .arg("-fw_cfg")
                .arg(format!("name={name},file={}", file.display()));
        }
        let stderr = std::fs::File::create(spec.console_log.with_extension("qemu.log"))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
        // async-signal-safe; it allocates nothing and touches no locks.
        unsafe {
            command.pre_exec(|| {
                // The harness dying (even by SIGKILL) must not leave qemus behind.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting qemu for {}", spec.name))?;
        let pid = child.id();
        cleanup::register_pid(pid);
        Ok(Vm {
            name: spec.name.clone(),
            child,
            pid,
            started: Instant::now(),
            console: Console::new(&spec.console_log),
            agent_path,
            agent: None,
            monitor_path,
            fatal_markers: FATAL_MARKERS,
            history: Vec::new(),
        })
    }

    /// When qemu was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits for the next console line that starts with `marker` and returns it. Fails on a
    /// fatal line (a panic, `APPLIANCE-ERROR`), when qemu exits, or after `timeout`.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(line) = self.console.next_line()? {
                self.history.push(line.clone());
                if line.starts_with(marker) {
                    return Ok(line);
                }
                if let Some(fatal) = self
                    .fatal_markers
                    .iter()
                    .find(|fatal| line.contains(*fatal) && !marker.starts_with(*fatal))
                {
                    bail!(
                        "{}: console says {fatal:?} while waiting for {marker:?}: {line}",
                        self.name
                    );
                }
            }
            if let Some(status) = self.child.try_wait()? {
                cleanup::unregister_pid(self.pid);
                bail!(
                    "{}: qemu exited ({status}) while waiting for {marker:?}",
                    self.name
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: no {marker:?} on the console within {timeout:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Like [`Vm::wait_for`], but a matching line already read (by an earlier wait, since the
    /// start or the last reset) counts too: for markers whose order against others is not fixed.
    pub fn wait_seen(&mut self, marker: &str, timeout: Duration) -> anyhow::Result<String> {
        if let Some(line) = self.history.iter().find(|line| line.starts_with(marker)) {
            return Ok(line.clone());
        }
        self.wait_for(marker, timeout)
    }

    /// Sets the lines that end a wait early (default: panics, `APPLIANCE-ERROR`, `BAD-IMAGE`);
    /// a scenario that boots a broken image on purpose clears them.
    pub fn set_fatal_markers(&mut self, markers: &'static [&'static str]) {
        self.fatal_markers = markers;
    }

    /// Runs a shell command in the guest over the command channel; returns its exit status and
    /// output. The guest's agent must be up (`AGENT-READY` seen).
    pub fn run(&mut self, command: &str, timeout: Duration) -> anyhow::Result<(i32, String)> {
        if command.contains('\n') {
            bail!("agent commands are one line");
        }
        let name = self.name.clone();
        let stream = match self.agent.as_mut() {
            Some(stream) => stream,
            None => {
                let stream = UnixStream::connect(&self.agent_path)
                    .with_context(|| format!("{name}: connecting to the command channel"))?;
                self.agent.insert(stream)
            }
        };
        stream.write_all(format!("{command}\n").as_bytes())?;
        let deadline = Instant::now() + timeout;
        let mut reply = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            if let Some((status, output)) = parse_agent_reply(&reply) {
                return Ok((status, output));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{name}: `{command}` gave no answer within {timeout:?}; so far: {}",
                    String::from_utf8_lossy(&reply)
                );
            }
            stream.set_read_timeout(Some(left.min(Duration::from_millis(500))))?;
            match stream.read(&mut buffer) {
                Ok(0) => bail!("{name}: command channel closed"),
                Ok(length) => reply.extend_from_slice(&buffer[..length]),
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(error) => return Err(error).context("reading the command channel"),
            }
        }
    }

    /// Runs a command and fails unless it exits 0; returns its output.
    pub fn run_ok(&mut self, command: &str, timeout: Duration) -> anyhow::Result<String> {
        let (status, output) = self.run(command, timeout)?;
        if status != 0 {
            bail!("{}: `{command}` exited {status}:\n{output}", self.name);
        }
        Ok(output)
    }

    /// Hard reset (the reset button), through the qemu monitor.
    pub fn reset(&mut self) -> anyhow::Result<()> {
        // The agent connection survives a guest reset, but a half-read reply would not.
        self.agent = None;
        self.history.clear();
        let mut monitor = UnixStream::connect(&self.monitor_path)
            .with_context(|| format!("{}: connecting to the qemu monitor", self.name))?;
        monitor.write_all(b"system_reset\n")?;
        // Wait for the monitor to echo the command back, so it has been taken.
        monitor.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut seen = Vec::new();
        let mut buffer = [0u8; 1024];
        while !String::from_utf8_lossy(&seen).contains("system_reset") {
            let length = monitor.read(&mut buffer)?;
            if length == 0 {
                break;
            }
            seen.extend_from_slice(&buffer[..length]);
        }
        Ok(())
    }

    /// Kills qemu (SIGKILL by PID) and reaps it.
    pub fn kill(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        // Unregister before reaping: once reaped, the PID may belong to someone else.
        cleanup::unregister_pid(self.pid);
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `output... AGENT-END status=N\n` as written by tests/vm/agent.sh.
fn parse_agent_reply(reply: &[u8]) -> Option<(i32, String)> {
    let text = String::from_utf8_lossy(reply);
    let end = text.find("AGENT-END status=")?;
    let rest = &text[end + "AGENT-END status=".len()..];
    let line_end = rest.find('\n')?;
    let status = rest[..line_end].trim().parse().ok()?;
    Some((status, text[..end].replace('\r', "")))
}

/// Reads a growing console log line by line.
struct Console {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    lines: std::collections::VecDeque<String>,
}

impl Console {
    fn new(path: &Path) -> Console {
        Console {
            path: path.to_owned(),
            offset: 0,
            partial: Vec::new(),
            lines: Default::default(),
        }
    }

    fn next_line(&mut self) -> anyhow::Result<Option<String>> {
        if self.lines.is_empty() {
            self.read_more()?;
        }
        Ok(self.lines.pop_front())
    }

    fn read_more(&mut self) -> anyhow::Result<()> {
        use std::io::Seek as _;
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error).context("opening console log"),
        };
        file.seek(std::io::SeekFrom::Start(self.offset))?;
        let mut fresh = Vec::new();
        file.read_to_end(&mut fresh)?;
        self.offset += fresh.len() as u64;
        self.partial.extend_from_slice(&fresh);
        while let Some(newline) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=newline).collect();
            let text = String::from_utf8_lossy(&line);
            self.lines
                .push_back(text.trim_end_matches(['\r', '\n']).to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_replies_are_parsed_when_complete() {
        assert_eq!(parse_agent_reply(b"PING 10.2.0.10\r\n3 packets"), None);
        assert_eq!(parse_agent_reply(b"out\nAGENT-END status=1"), None);
        assert_eq!(
            parse_agent_reply(b"line one\r\nline two\nAGENT-END status=1\n"),
            Some((1, "line one\nline two\n".to_owned()))
        );
        assert_eq!(
            parse_agent_reply(b"AGENT-END status=0\n"),
            Some((0, String::new()))
        );
    }

    #[test]
    fn console_lines_come_out_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut console = Console::new(&path);
        assert_eq!(console.next_line().unwrap(), None, "no file yet");
        std::fs::write(&path, "first\r\nsec").unwrap();
        assert_eq!(console.next_line().unwrap().as_deref(), Some("first"));
        assert_eq!(console.next_line().unwrap(), None, "partial line held back");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"ond\nthird\n").unwrap();
        assert_eq!(console.next_line().unwrap().as_deref(), Some("second"));
        assert_eq!(console.next_line().unwrap().as_deref(), Some("third"));
    }
}
