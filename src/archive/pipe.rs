//! Decompression on a helper thread: the tar parser and the file writes on
//! the calling thread overlap with zstd (and age) decoding, as they do in
//! `zstd -d | tar -x`.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::Scope;

/// Bytes per chunk handed over.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight (bounds the memory to about 2 MiB).
const IN_FLIGHT: usize = 8;

enum Chunk {
    /// A buffer of `CHUNK` bytes, of which the first `usize` are data
    /// (buffers keep their length so that recycling needs no re-zeroing).
    Data(Vec<u8>, usize),
    End,
    Fail(io::Error),
}

/// The reading end: the decoded stream, in order.
pub(crate) struct PipeReader {
    rx: Receiver<Chunk>,
    spare: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    len: usize,
    pos: usize,
    done: bool,
}

/// Starts reading `source` to its end on a scoped thread.
pub(crate) fn spawn<'scope, R: Read + Send + 'scope>(
    scope: &'scope Scope<'scope, '_>,
    source: R,
) -> io::Result<PipeReader> {
    let (tx, rx) = sync_channel(IN_FLIGHT);
    let (spare, spare_rx) = sync_channel(IN_FLIGHT);
    std::thread::Builder::new()
        .name("synback-decode".into())
        .spawn_scoped(scope, move || pump(source, &tx, &spare_rx))?;
    Ok(PipeReader {
        rx,
        spare,
        cur: Vec::new(),
        len: 0,
        pos: 0,
        done: false,
    })
}

fn pump(mut source: impl Read, tx: &SyncSender<Chunk>, spare: &Receiver<Vec<u8>>) {
    loop {
        let mut buf = spare.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
        let msg = match source.read(&mut buf) {
            Ok(0) => Chunk::End,
            Ok(n) => Chunk::Data(buf, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Chunk::Fail(e),
        };
        let last = !matches!(msg, Chunk::Data(..));
        // A closed channel means the reader gave up (error or cancel).
        if tx.send(msg).is_err() || last {
            return;
        }
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.len {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Chunk::Data(next, len)) => {
                    let old = std::mem::replace(&mut self.cur, next);
                    if !old.is_empty() {
                        let _ = self.spare.try_send(old);
                    }
                    (self.len, self.pos) = (len, 0);
                }
                Ok(Chunk::End) => self.done = true,
                Ok(Chunk::Fail(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Err(io::Error::other("the decompression thread stopped"));
                }
            }
        }
        let n = buf.len().min(self.len - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_bytes_and_errors_through_in_order() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let failing = (&data[..]).chain(FailAfter);
        std::thread::scope(|s| {
            let mut r = spawn(s, failing).unwrap();
            let mut got = vec![0; data.len()];
            r.read_exact(&mut got).unwrap();
            assert_eq!(got, data);
            let err = r.read(&mut [0; 10]).unwrap_err();
            assert_eq!(err.to_string(), "boom");
            assert_eq!(r.read(&mut [0; 10]).unwrap(), 0);
        });
    }

    #[test]
    fn a_reader_that_gives_up_stops_the_thread() {
        let endless = io::repeat(7);
        std::thread::scope(|s| {
            let mut r = spawn(s, endless).unwrap();
            let mut b = [0; 10];
            r.read_exact(&mut b).unwrap();
            drop(r);
        });
    }

    struct FailAfter;
    impl Read for FailAfter {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("boom"))
        }
    }
}
