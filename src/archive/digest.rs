//! MD5 and SHA-256 of the archive stream, computed on two helper threads
//! (one per algorithm) so that hashing overlaps with compression instead of
//! stalling the thread that feeds zstd.
//!
//! Why two: on incompressible input zstd produces output about as fast as
//! it reads, and one thread doing MD5 (~0.7 GB/s) and SHA-256 (twice over
//! volumes after the first, for the whole-stream digest) becomes the
//! slowest stage of the pipeline. Split, the stage runs at MD5's speed and
//! the two cores of a small machine both have work. Chunks are shared
//! between the threads, not copied.

use std::io;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use md5::Md5;
use sha2::{Digest, Sha256};

/// Chunks in flight to each hashing thread (zstd hands out ~128 KiB chunks).
const IN_FLIGHT: usize = 16;

enum Msg {
    Data(Arc<Vec<u8>>),
    EndVolume,
    Finish,
}

/// Digests of one volume: (md5, sha256), lowercase hex.
pub(crate) type VolumeDigests = (String, String);

/// What one hashing thread computes over the stream it is fed.
trait StreamHash: Send + 'static {
    fn update(&mut self, data: &[u8]);
    /// The lowercase hex digest of the volume that just ended.
    fn end_volume(&mut self) -> String;
    /// The lowercase hex digest of the whole stream, if this lane keeps one.
    fn finish(&mut self) -> Option<String>;
}

/// MD5 of each volume: what the NAS's MD5 task is compared with.
#[derive(Default)]
struct VolumeMd5(Md5);

impl StreamHash for VolumeMd5 {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    fn end_volume(&mut self) -> String {
        hex::encode(std::mem::take(&mut self.0).finalize())
    }

    fn finish(&mut self) -> Option<String> {
        None
    }
}

/// SHA-256 of each volume and of the whole stream (the manifest's).
#[derive(Default)]
struct VolumeAndTotalSha256 {
    volume: Sha256,
    total: Sha256,
    /// Volume 1 has ended: later volumes need a digest of their own.
    past_first: bool,
}

impl StreamHash for VolumeAndTotalSha256 {
    fn update(&mut self, data: &[u8]) {
        self.total.update(data);
        if self.past_first {
            self.volume.update(data);
        }
    }

    fn end_volume(&mut self) -> String {
        // Volume 1 is a prefix of the whole stream: its SHA-256 is the
        // whole-stream state here (one pass saved for the common
        // single-volume archive).
        let sha = if self.past_first {
            std::mem::take(&mut self.volume).finalize()
        } else {
            self.total.clone().finalize()
        };
        self.past_first = true;
        hex::encode(sha)
    }

    fn finish(&mut self) -> Option<String> {
        Some(hex::encode(std::mem::take(&mut self.total).finalize()))
    }
}

/// One hashing thread and the channels to it.
struct Lane {
    tx: Option<SyncSender<Msg>>,
    replies: Receiver<Option<String>>,
    handle: Option<JoinHandle<()>>,
}

impl Lane {
    fn start<H: StreamHash>(
        name: &str,
        hash: H,
        spare: SyncSender<Arc<Vec<u8>>>,
    ) -> io::Result<Self> {
        let (tx, rx) = sync_channel(IN_FLIGHT);
        let (reply_tx, replies) = sync_channel(1);
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(hash, &rx, &reply_tx, &spare))?;
        Ok(Self {
            tx: Some(tx),
            replies,
            handle: Some(handle),
        })
    }

    fn send(&self, msg: Msg) -> io::Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(msg).ok())
            .ok_or_else(stopped)
    }

    /// The lane's answer to the last `EndVolume` or `Finish` sent.
    fn answer(&self) -> io::Result<Option<String>> {
        self.replies.recv().map_err(|_| stopped())
    }

    /// Sends `msg` and waits for the lane's answer to it.
    fn ask(&self, msg: Msg) -> io::Result<Option<String>> {
        self.send(msg)?;
        self.answer()
    }

    fn stop(&mut self) {
        self.tx = None;
        if let Some(handle) = self.handle.take() {
            // The thread ends as soon as its channel closes; it cannot fail.
            let _ = handle.join();
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run<H: StreamHash>(
    mut hash: H,
    rx: &Receiver<Msg>,
    replies: &SyncSender<Option<String>>,
    spare: &SyncSender<Arc<Vec<u8>>>,
) {
    while let Ok(msg) = rx.recv() {
        let reply = match msg {
            Msg::Data(buf) => {
                hash.update(&buf);
                let _ = spare.try_send(buf);
                continue;
            }
            Msg::EndVolume => Some(hash.end_volume()),
            Msg::Finish => hash.finish(),
        };
        if replies.send(reply).is_err() {
            return;
        }
    }
}

/// A running hasher: feed bytes in order, mark volume ends, finish.
pub(crate) struct Digester {
    md5: Lane,
    sha256: Lane,
    /// Chunks the lanes are done with; a chunk is reused once both are.
    spare: Receiver<Arc<Vec<u8>>>,
}

impl Digester {
    pub(crate) fn start() -> io::Result<Self> {
        let (spare_tx, spare) = sync_channel(2 * IN_FLIGHT);
        Ok(Self {
            md5: Lane::start("synback-md5", VolumeMd5::default(), spare_tx.clone())?,
            sha256: Lane::start("synback-sha256", VolumeAndTotalSha256::default(), spare_tx)?,
            spare,
        })
    }

    /// A chunk buffer no lane holds any more, or a new one.
    fn spare_buffer(&self) -> Vec<u8> {
        // A chunk comes back once from each lane: the first return still
        // shares it with the other lane and is dropped, the second is ours.
        std::iter::from_fn(|| self.spare.try_recv().ok())
            .find_map(|chunk| Arc::try_unwrap(chunk).ok())
            .unwrap_or_default()
    }

    /// Hashes the next bytes of the stream (copied; the caller keeps `data`).
    pub(crate) fn update(&mut self, data: &[u8]) -> io::Result<()> {
        let mut buf = self.spare_buffer();
        buf.clear();
        buf.extend_from_slice(data);
        let chunk = Arc::new(buf);
        self.md5.send(Msg::Data(Arc::clone(&chunk)))?;
        self.sha256.send(Msg::Data(chunk))
    }

    /// The digests of the volume that just ended.
    pub(crate) fn end_volume(&mut self) -> io::Result<VolumeDigests> {
        self.md5.send(Msg::EndVolume)?;
        let sha256 = self.sha256.ask(Msg::EndVolume)?;
        let md5 = self.md5.answer()?;
        md5.zip(sha256).ok_or_else(stopped)
    }

    /// The SHA-256 of the whole stream.
    pub(crate) fn finish(mut self) -> io::Result<String> {
        self.md5.stop();
        let total = self.sha256.ask(Msg::Finish)?.ok_or_else(stopped)?;
        self.sha256.stop();
        Ok(total)
    }
}

fn stopped() -> io::Error {
    io::Error::other("a hashing thread stopped")
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
    fn reused_chunk_buffers_never_change_under_a_slower_lane() {
        // Many distinct chunks, far more than are in flight: buffers come
        // back from the faster lane while the slower one still hashes them.
        let chunks: Vec<Vec<u8>> = (0..2000u32)
            .map(|i| {
                (0..4096u32)
                    .map(|j| (i.wrapping_mul(31) ^ j) as u8)
                    .collect()
            })
            .collect();
        let mut d = Digester::start().unwrap();
        for c in &chunks {
            d.update(c).unwrap();
        }
        let (md5, sha256) = d.end_volume().unwrap();
        let all = chunks.concat();
        assert_eq!(md5, hex::encode(Md5::digest(&all)));
        assert_eq!(sha256, hex::encode(Sha256::digest(&all)));
        assert_eq!(d.finish().unwrap(), sha256);
    }

    #[test]
    fn dropping_a_running_digester_does_not_hang() {
        let mut d = Digester::start().unwrap();
        d.update(b"abc").unwrap();
        drop(d);
    }
}
