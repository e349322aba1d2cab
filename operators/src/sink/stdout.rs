//! Detections to standard output (`--detections-to stdout`): each detection's JSON line (the
//! lines of `dfp_detections_{source}.jsonl`), one per line, flushed after every epoch, for
//! piping into `jq`, a shipper or a SIEM's collector. Logs stay on stderr.
//!
//! Across a crash and restart a stream's files and topic are written exactly once; standard
//! output cannot be taken back, so the epochs after the checkpoint are written again (at least
//! once). State: none.

use std::io::Write;

use dfp_engine::{Error, Result};

use super::Sink;
use crate::serialize::{Line, OutKind};

/// Writes detections to standard output (or, for tests, any writer).
#[derive(Debug)]
pub struct StdoutSink<W = std::io::Stdout> {
    out: W,
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self {
            out: std::io::stdout(),
        }
    }
}

impl<W: Write + Send> StdoutSink<W> {
    /// Writes to `out` instead.
    pub fn to(out: W) -> Self {
        Self { out }
    }
}

impl<W: Write + Send> Sink for StdoutSink<W> {
    fn describe(&self) -> String {
        "standard output".into()
    }

    fn write_epoch(&mut self, _epoch: u64, lines: &[Line]) -> Result<()> {
        let err = |e| Error::io("stdout", "writing detections", e);
        for line in lines.iter().filter(|l| l.kind == OutKind::DetectionsJson) {
            writeln!(self.out, "{}", line.text).map_err(err)?;
        }
        self.out.flush().map_err(err)
    }

    fn state(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(kind: OutKind, text: &str) -> Line {
        Line::unkeyed(kind, text)
    }

    #[test]
    fn only_detection_json_lines_go_out_in_order() {
        let mut sink = StdoutSink::to(Vec::new());
        let epoch = [
            line(OutKind::DetectionsCsv, "a,b"),
            line(OutKind::DetectionsJson, "{\"n\":1}"),
            line(OutKind::ScoresCsv, "s"),
            line(OutKind::DeadLetters, "{\"dead\":1}"),
            line(OutKind::DetectionsJson, "{\"n\":2}"),
        ];
        sink.write_epoch(0, &epoch).unwrap();
        sink.write_epoch(1, &epoch[1..2]).unwrap();
        assert_eq!(
            String::from_utf8(sink.out).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n{\"n\":1}\n"
        );
        assert_eq!(StdoutSink::to(Vec::new()).state().unwrap(), None);
    }

    #[test]
    fn a_closed_pipe_is_an_error_naming_stdout() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let e = StdoutSink::to(Closed)
            .write_epoch(0, &[line(OutKind::DetectionsJson, "{}")])
            .unwrap_err();
        assert!(e.chain().contains("stdout"), "{}", e.chain());
    }
}
