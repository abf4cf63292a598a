//! MD5 and SHA-256 of the archive stream, computed on a helper thread so
//! that hashing overlaps with compression instead of stalling the thread
//! that feeds zstd.

use std::io;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use md5::Md5;
use sha2::{Digest, Sha256};

/// Chunks in flight to the hashing thread (zstd hands out ~128 KiB chunks).
const IN_FLIGHT: usize = 16;

enum Msg {
    Data(Vec<u8>),
    EndVolume,
    Finish,
}

enum Reply {
    Volume { md5: String, sha256: String },
    Total(String),
}

/// Digests of one volume: (md5, sha256), lowercase hex.
pub(crate) type VolumeDigests = (String, String);

/// A running hasher: feed bytes in order, mark volume ends, finish.
pub(crate) struct Digester {
    tx: Option<SyncSender<Msg>>,
    replies: Receiver<Reply>,
    spare: Receiver<Vec<u8>>,
    handle: Option<JoinHandle<()>>,
}

impl Digester {
    pub(crate) fn start() -> io::Result<Self> {
        let (tx, rx) = sync_channel(IN_FLIGHT);
        let (reply_tx, replies) = sync_channel(1);
        let (spare_tx, spare) = sync_channel(IN_FLIGHT);
        let handle = std::thread::Builder::new()
            .name("synback-hash".into())
            .spawn(move || run(&rx, &reply_tx, &spare_tx))?;
        Ok(Self {
            tx: Some(tx),
            replies,
            spare,
            handle: Some(handle),
        })
    }

    fn send(&self, msg: Msg) -> io::Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(msg).ok())
            .ok_or_else(stopped)
    }

    /// Hashes the next bytes of the stream (copied; the caller keeps `data`).
    pub(crate) fn update(&mut self, data: &[u8]) -> io::Result<()> {
        let mut buf = self.spare.try_recv().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(data);
        self.send(Msg::Data(buf))
    }

    /// The digests of the volume that just ended.
    pub(crate) fn end_volume(&mut self) -> io::Result<VolumeDigests> {
        self.send(Msg::EndVolume)?;
        match self.replies.recv() {
            Ok(Reply::Volume { md5, sha256 }) => Ok((md5, sha256)),
            _ => Err(stopped()),
        }
    }

    /// The SHA-256 of the whole stream.
    pub(crate) fn finish(mut self) -> io::Result<String> {
        self.send(Msg::Finish)?;
        let total = match self.replies.recv() {
            Ok(Reply::Total(sha)) => sha,
            _ => return Err(stopped()),
        };
        self.stop();
        Ok(total)
    }

    fn stop(&mut self) {
        self.tx = None;
        if let Some(handle) = self.handle.take() {
            // The thread ends as soon as its channel closes; it cannot fail.
            let _ = handle.join();
        }
    }
}

impl Drop for Digester {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stopped() -> io::Error {
    io::Error::other("the hashing thread stopped")
}

fn run(rx: &Receiver<Msg>, replies: &SyncSender<Reply>, spare: &SyncSender<Vec<u8>>) {
    let mut md5 = Md5::new();
    let mut volume = Sha256::new();
    let mut total = Sha256::new();
    let mut first = true;
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Data(buf) => {
                md5.update(&buf);
                total.update(&buf);
                if !first {
                    volume.update(&buf);
                }
                let _ = spare.try_send(buf);
            }
            Msg::EndVolume => {
                // Volume 1 is a prefix of the whole stream: its SHA-256 is
                // the whole-stream state here (one pass saved for the
                // common single-volume archive).
                let sha = if first {
                    total.clone().finalize()
                } else {
                    std::mem::take(&mut volume).finalize()
                };
                first = false;
                let reply = Reply::Volume {
                    md5: hex::encode(std::mem::take(&mut md5).finalize()),
                    sha256: hex::encode(sha),
                };
                if replies.send(reply).is_err() {
                    return;
                }
            }
            Msg::Finish => {
                let _ = replies.send(Reply::Total(hex::encode(
                    std::mem::take(&mut total).finalize(),
                )));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_one_shot_hashing() {
        let a: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let b = b"second volume".to_vec();
        let mut d = Digester::start().unwrap();
        for c in a.chunks(7000) {
            d.update(c).unwrap();
        }
        let (m1, s1) = d.end_volume().unwrap();
        d.update(&b).unwrap();
        let (m2, s2) = d.end_volume().unwrap();
        let total = d.finish().unwrap();
        assert_eq!(m1, hex::encode(Md5::digest(&a)));
        assert_eq!(s1, hex::encode(Sha256::digest(&a)));
        assert_eq!(m2, hex::encode(Md5::digest(&b)));
        assert_eq!(s2, hex::encode(Sha256::digest(&b)));
        assert_eq!(total, hex::encode(Sha256::digest([a, b].concat())));
    }

    #[test]
    fn dropping_a_running_digester_does_not_hang() {
        let mut d = Digester::start().unwrap();
        d.update(b"abc").unwrap();
        drop(d);
    }
}
