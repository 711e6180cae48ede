//! Leaves nothing behind: every qemu PID and scratch directory the harness creates is registered
//! here, and Ctrl-C / SIGTERM kill those PIDs and remove those directories before exiting.
//! Normal paths clean up through `Drop`; this covers the interrupted ones.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, Once,
    },
};

static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static DIRECTORIES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static HOLDING: AtomicBool = AtomicBool::new(false);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

pub fn register_pid(pid: u32) {
    lock(&PIDS).push(pid);
}

pub fn unregister_pid(pid: u32) {
    lock(&PIDS).retain(|&known| known != pid);
}

pub fn register_directory(path: PathBuf) {
    lock(&DIRECTORIES).push(path);
}

pub fn unregister_directory(path: &std::path::Path) {
    lock(&DIRECTORIES).retain(|known| known != path);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Routes SIGINT and SIGTERM to a handler thread. Call before starting any other thread, so
/// every thread inherits the blocked mask and only the handler sees the signals.
pub fn install() {
    INSTALL.call_once(|| {
        let set = signal_set();
        // SAFETY: `set` is an initialised sigset_t; blocking signals in this thread has no
        // memory-safety preconditions.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                let mut signal = 0;
                // SAFETY: `set` is initialised and `signal` is a valid place to write to.
                if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                    continue;
                }
                if HOLDING.load(Ordering::SeqCst) && !INTERRUPTED.swap(true, Ordering::SeqCst) {
                    // A holding demo shuts down in order on the first Ctrl-C.
                    continue;
                }
                eprintln!(
                    "\ninterrupted: killing {} qemu(s) and cleaning up",
                    lock(&PIDS).len()
                );
                kill_everything();
                std::process::exit(130);
            })
            .expect("starting the signal thread");
    });
}

/// Blocks until Ctrl-C or SIGTERM (for `--hold`); the caller then shuts down normally.
pub fn hold_until_interrupted() {
    HOLDING.store(true, Ordering::SeqCst);
    while !INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    HOLDING.store(false, Ordering::SeqCst);
}

fn kill_everything() {
    for pid in lock(&PIDS).drain(..) {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: kill has no memory-safety preconditions; the PID is a qemu we started
            // and have not reaped (reaping unregisters it), so it cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for directory in lock(&DIRECTORIES).drain(..) {
        let _ = std::fs::remove_dir_all(directory);
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; sigaddset adds valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}
