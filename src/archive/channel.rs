//! Bridges between the synchronous archive code (inside `spawn_blocking`)
//! and async tasks: a [`VolumeSink`] that sends to a tokio channel, and a
//! [`Read`] fed by one. Nothing here knows what is at the other end.

use std::io::{self, Read};

use bytes::Bytes;
use tokio::sync::mpsc::{Receiver, Sender};

use super::volume::{VolumeInfo, VolumeSink};

/// What a [`ChannelSink`] sends, in order.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum VolumeEvent {
    /// Volume `index` (1-based) starts.
    Begin(u32),
    /// The next bytes of the current volume.
    Data(Bytes),
    /// The current volume is complete.
    End(VolumeInfo),
}

/// A [`VolumeSink`] that forwards everything to an async task.
///
/// Use it from blocking code only (e.g. inside `spawn_blocking`): it waits
/// with `blocking_send` when the channel is full, which bounds memory to
/// the channel's capacity.
#[derive(Debug)]
pub struct ChannelSink {
    tx: Sender<VolumeEvent>,
}

impl ChannelSink {
    /// Sends to `tx`.
    pub fn new(tx: Sender<VolumeEvent>) -> Self {
        Self { tx }
    }

    fn send(&self, event: VolumeEvent) -> io::Result<()> {
        self.tx
            .blocking_send(event)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the volume receiver is gone"))
    }
}

impl VolumeSink for ChannelSink {
    fn begin_volume(&mut self, index: u32) -> io::Result<()> {
        self.send(VolumeEvent::Begin(index))
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.send(VolumeEvent::Data(Bytes::copy_from_slice(buf)))
    }

    fn end_volume(&mut self, info: &VolumeInfo) -> io::Result<()> {
        self.send(VolumeEvent::End(info.clone()))
    }
}

/// A blocking [`Read`] over chunks sent by an async task (for example the
/// downloaded volumes of a snapshot, in order). The sender ends the stream
/// by dropping its side; an `Err` chunk is returned to the reader as is.
#[derive(Debug)]
pub struct ChannelReader {
    rx: Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl ChannelReader {
    /// Reads from `rx`. Use it from blocking code only.
    pub fn new(rx: Receiver<io::Result<Bytes>>) -> Self {
        Self {
            rx,
            cur: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.cur = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{self, PackOptions, UnpackOptions};
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn pack_into_a_channel_and_unpack_from_one() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("f"), vec![9u8; 300_000]).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let mut opts = PackOptions::new([src.path()]);
        opts.volume_size = Some(100);
        let packing = tokio::task::spawn_blocking(move || {
            archive::pack(
                &opts,
                &mut ChannelSink::new(tx),
                &|_| {},
                &CancellationToken::new(),
            )
        });
        let (mut volumes, mut ends) = (Vec::<Vec<u8>>::new(), Vec::new());
        while let Some(event) = rx.recv().await {
            match event {
                VolumeEvent::Begin(_) => volumes.push(Vec::new()),
                VolumeEvent::Data(b) => volumes.last_mut().unwrap().extend_from_slice(&b),
                VolumeEvent::End(info) => ends.push(info),
            }
        }
        let summary = packing.await.unwrap().unwrap();
        assert_eq!(summary.volumes, ends);
        assert!(volumes.len() > 1);

        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let out = tempfile::tempdir().unwrap();
        let target = out.path().to_path_buf();
        let restoring = tokio::task::spawn_blocking(move || {
            archive::unpack(
                ChannelReader::new(rx),
                &UnpackOptions::new(target),
                &CancellationToken::new(),
            )
        });
        for v in volumes {
            tx.send(Ok(Bytes::from(v))).await.unwrap();
        }
        drop(tx);
        let report = restoring.await.unwrap().unwrap();
        assert_eq!(report.files, 1);
    }

    #[tokio::test]
    async fn a_failed_download_reaches_the_reader() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let reading = tokio::task::spawn_blocking(move || {
            let mut r = ChannelReader::new(rx);
            let mut s = Vec::new();
            r.read_to_end(&mut s)
        });
        tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
        tx.send(Err(io::Error::other("connection reset")))
            .await
            .unwrap();
        let err = reading.await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "connection reset");
    }
}
