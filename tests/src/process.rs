//! A Vigie binary run as a real process, its stderr captured; and a small disk to fill.

use super::*;

/// A running Vigie binary with its stderr captured (and echoed, prefixed, for failing tests).
pub struct Process {
    name: String,
    binary: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    pub fn start(binary: &str, args: &[String]) -> Result<Process> {
        let mut process = Process {
            name: binary.to_owned(),
            binary: vigie_binary(binary)?,
            args: args.to_vec(),
            child: None,
            log: Arc::new(Mutex::new(Vec::new())),
        };
        process.spawn()?;
        Ok(process)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut child = Command::new(&self.binary)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let log = self.log.clone();
        let name = self.name.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
                if let Ok(mut log) = log.lock() {
                    log.push(line);
                }
            }
        });
        self.child = Some(child);
        Ok(())
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits for a log line containing `needle` after line `from`; returns its index and text.
    pub fn wait_for_log(&self, needle: &str, from: usize) -> Result<(usize, String)> {
        poll(&format!("{} to log {needle:?}", self.name), WAIT, || {
            let log = self.log.lock().ok()?;
            log.iter().enumerate().skip(from).find(|(_, l)| l.contains(needle)).map(|(i, l)| (i, l.clone()))
        })
    }

    pub fn log_len(&self) -> usize {
        self.log.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// The `addr=` of the first log line containing `needle` after line `from`.
    pub fn wait_for_addr(&self, needle: &str, from: usize) -> Result<String> {
        let (_, line) = self.wait_for_log(needle, from)?;
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no addr= in {line:?}"))
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Freezes the process (SIGSTOP): alive, connections open, silent. `resume` undoes it.
    pub fn pause(&self) -> Result<()> {
        signal(
            self.child.as_ref().ok_or_else(|| anyhow!("{} is not running", self.name))?,
            nix::sys::signal::Signal::SIGSTOP,
        )
    }

    pub fn resume(&self) -> Result<()> {
        signal(
            self.child.as_ref().ok_or_else(|| anyhow!("{} is not running", self.name))?,
            nix::sys::signal::Signal::SIGCONT,
        )
    }

    /// SIGKILL: no cleanup at all.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Waits for the process to exit by itself; its exit status.
    pub fn wait_exit(&mut self) -> Result<ExitStatus> {
        let child = self.child.as_mut().ok_or_else(|| anyhow!("{} is not running", self.name))?;
        let status = wait_exit(child, &format!("{} to exit by itself", self.name))?;
        self.child = None;
        Ok(status)
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("{} is not running", self.name))?;
        signal(&child, nix::sys::signal::Signal::SIGTERM)?;
        wait_exit(&mut child, &format!("{} to exit", self.name))
    }

    /// Starts the process again; it must have stopped (killed or terminated) first, so that a
    /// test never leaves a second copy running.
    pub fn restart(&mut self) -> Result<usize> {
        if self.is_running() {
            bail!("{} is still running: kill or terminate it before restarting it", self.name);
        }
        let from = self.log_len();
        self.spawn()?;
        Ok(from)
    }

    /// From now on the process starts with `flag value` (the last such flag is replaced): a
    /// process started on port 0 comes back on the address it first took, where its clients are.
    pub fn pin_arg(&mut self, flag: &str, value: &str) {
        match self.args.iter().rposition(|a| a == flag) {
            Some(i) if i + 1 < self.args.len() => self.args[i + 1] = value.to_owned(),
            _ => self.args.extend([flag.to_owned(), value.to_owned()]),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Held by the tests that load the machine most (the browser test, the fault suite, the
/// benchmark's smoke run) for their whole run, so that they never overlap: on two cores, a
/// browser drawing 30,000 lamps next to a fault schedule's write load misses its own deadlines.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A size-limited tmpfs mounted over a folder (the folder's files are carried over), to fill a
/// process's disk in a test; unmounted when dropped. Needs root (CI runs as root).
pub struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Mounts `bytes` of tmpfs over `path` with its current contents; `None` when mounting is
    /// not allowed here.
    pub fn mount_over(path: &Path, bytes: u64) -> Result<Option<SmallDisk>> {
        let saved = tempfile::tempdir()?;
        let copy = |from: &Path, to: &Path| -> Result<()> {
            let status = Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to).status()?;
            if !status.success() {
                bail!("copying {} to {}", from.display(), to.display());
            }
            Ok(())
        };
        copy(path, saved.path())?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()?;
        if !mounted.success() {
            return Ok(None);
        }
        let disk = SmallDisk { path: path.to_owned() };
        copy(saved.path(), path)?;
        Ok(Some(disk))
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }

    /// Fills the disk: a file takes every byte left.
    pub fn fill(&self) -> Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(self.filler())?;
        let block = vec![0u8; 64 * 1024];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let _ = file.sync_all();
        Ok(())
    }

    /// Frees what [`SmallDisk::fill`] took.
    pub fn free(&self) -> Result<()> {
        std::fs::remove_file(self.filler())?;
        Ok(())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
