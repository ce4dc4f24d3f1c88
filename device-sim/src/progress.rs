//! Log lines that go around a progress bar: the command-line tools (device-sim and
//! `iotpipe`) draw a bar or a status line on stderr and log to stderr too. Written as is,
//! a log line lands inside the bar's line and the next redraw leaves a torn line behind;
//! [`BarWriter`] writes each line with the bar hidden, then draws the bar again.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};

use indicatif::ProgressBar;
use tracing_subscriber::fmt::MakeWriter;

/// A `tracing` writer to stderr that hides the current progress bar while it writes (the
/// formatter writes each event in one call). The bar can be set later ([`BarWriter::show`]),
/// when the command has one; until then, lines are written as they are.
///
/// Hiding the bar takes its lock: an event logged inside the bar's own
/// [`ProgressBar::suspend`] would wait for that lock forever. Log outside it — the writer
/// hides the bar anyway.
#[derive(Clone, Default)]
pub struct BarWriter(Arc<Mutex<Option<ProgressBar>>>);

impl BarWriter {
    /// A writer that goes around `bar`.
    pub fn new(bar: ProgressBar) -> Self {
        Self(Arc::new(Mutex::new(Some(bar))))
    }

    /// Goes around `bar` from now on (replacing the bar it went around before).
    pub fn show(&self, bar: &ProgressBar) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(bar.clone());
    }
}

impl Write for BarWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let bar = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match bar {
            Some(bar) => bar.suspend(|| io::stderr().write_all(buf))?,
            None => io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for BarWriter {
    type Writer = BarWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
