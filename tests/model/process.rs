//! Runs that a test watches and interrupts: their output collects as it comes, and the test
//! waits for events (a line printed, a file written, the process ended), never for a number
//! of seconds. A wait has a cap only to catch a hang.
//!
//! A fast machine can finish a run before the test reacts to its event. Such a run did not
//! fail anything: [`with_more_work`] starts it again with four times the work.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a wait for an event may take before the test calls it a hang. The events waited
/// for (a process start, a first checkpoint, a run's end after a signal) take at most a few
/// minutes on two loaded cores of lavapipe; this is ten times more than that.
pub const HANG_CAP: Duration = Duration::from_secs(40 * 60);

/// A process in the background whose stdout and stderr collect, line by line, as they come.
pub struct Background {
    child: Child,
    log: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// How a run ended: its status and everything it printed.
pub struct Ended {
    pub status: ExitStatus,
    pub text: String,
}

impl Background {
    pub fn start(mut c: Command) -> Background {
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap_or_else(|e| panic!("start {c:?}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let pipes: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        let readers = pipes
            .into_iter()
            .map(|pipe| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                        let mut l = log.lock().unwrap();
                        l.push_str(&line);
                        l.push('\n');
                    }
                })
            })
            .collect();
        Background {
            child,
            log,
            readers,
        }
    }

    /// Everything printed so far.
    pub fn text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `ready` (given the output so far) returns a value, or the process ends
    /// first (`Err`, with how it ended). Panics naming `event` after [`HANG_CAP`].
    pub fn wait_for<T>(
        &mut self,
        event: &str,
        mut ready: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, Ended> {
        let start = Instant::now();
        loop {
            if let Some(value) = ready(&self.text()) {
                return Ok(value);
            }
            if self.child.try_wait().unwrap().is_some() {
                // It may have printed or written the event just before it ended.
                let text = self.drain();
                if let Some(value) = ready(&text) {
                    return Ok(value);
                }
                let status = self.child.wait().unwrap();
                return Err(Ended { status, text });
            }
            assert!(
                start.elapsed() < HANG_CAP,
                "hang: no {event} after {HANG_CAP:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// True once the process has ended (it is not reaped: its pid stays taken).
    pub fn has_ended(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Sends `signal` (a `kill` name: INT, TERM, KILL) to the process itself.
    pub fn signal(&self, signal: &str) {
        send(signal, &self.pid().to_string());
    }

    /// Waits for the process to end. Panics naming `event` after [`HANG_CAP`].
    pub fn finish(mut self, event: &str) -> Ended {
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < HANG_CAP,
                "hang: {event} did not happen in {HANG_CAP:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = self.drain();
        let status = self.child.wait().unwrap();
        Ended { status, text }
    }

    /// Joins the output readers (the pipes close when the process and its children end).
    fn drain(&mut self) -> String {
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        self.text()
    }
}

/// `kill -<signal> <pid>`; false when no such process exists any more.
pub fn try_send(signal: &str, pid: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{signal}"), pid])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// `kill -<signal> <pid>` to a process that must exist.
pub fn send(signal: &str, pid: &str) {
    assert!(try_send(signal, pid), "kill -{signal} {pid} failed");
}

/// Runs `attempt(scale)` with scale 1, 4, 16, … until it returns a value. An attempt
/// returns `None` when its run ended before the test could interrupt it, which only a
/// machine faster than the run's size assumed can cause: the next attempt does four times
/// the work.
pub fn with_more_work<T>(what: &str, mut attempt: impl FnMut(usize) -> Option<T>) -> T {
    let mut scale = 1;
    loop {
        if let Some(value) = attempt(scale) {
            return value;
        }
        scale *= 4;
        eprintln!("{what}: the run ended before it was interrupted; again with {scale}x the work");
    }
}
