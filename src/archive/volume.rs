//! Splitting the archive byte stream into volumes, hashing as bytes flow.

use std::cell::Cell;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::digest::Digester;
use super::scan::InputTotal;

/// Size and digests of one volume, as produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// 1-based volume number, in stream order.
    pub index: u32,
    /// Exact size in bytes.
    pub size: u64,
    /// Lowercase hex MD5 (what the NAS's MD5 task reports).
    pub md5: String,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    /// True for the final volume of the archive (so a sink can name a
    /// single-volume archive differently from the first of several).
    pub last: bool,
}

/// Where [`pack`](super::pack) sends the archive bytes.
///
/// The backup run implements this: a spool file per volume, or a channel
/// to an upload. Volumes are produced one after the other: `begin_volume`,
/// any number of `write`s, `end_volume`, then the next volume. A full
/// volume is ended when the first byte of the next one is ready (or the
/// archive ends), so [`VolumeInfo::last`] is known in `end_volume`.
pub trait VolumeSink {
    /// A new volume starts (`index` is 1-based).
    ///
    /// # Errors
    /// Any I/O error aborts the pack with [`Error::Sink`](super::Error::Sink).
    fn begin_volume(&mut self, index: u32) -> io::Result<()>;

    /// Bytes of the current volume, in order.
    ///
    /// # Errors
    /// Any I/O error aborts the pack with [`Error::Sink`](super::Error::Sink).
    fn write(&mut self, buf: &[u8]) -> io::Result<()>;

    /// The current volume is complete; `info` has its exact size and digests.
    ///
    /// # Errors
    /// Any I/O error aborts the pack with [`Error::Sink`](super::Error::Sink).
    fn end_volume(&mut self, info: &VolumeInfo) -> io::Result<()>;
}

/// A sink that writes every volume, back to back, into one writer.
///
/// With no `volume_size` this is simply "the archive into a file".
#[derive(Debug)]
pub struct WriterSink<W: Write> {
    inner: W,
}

impl<W: Write> WriterSink<W> {
    /// Wraps a writer.
    pub fn new(inner: W) -> Self {
        Self { inner }
    }

    /// Gives the writer back.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> VolumeSink for WriterSink<W> {
    fn begin_volume(&mut self, _index: u32) -> io::Result<()> {
        Ok(())
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)
    }

    fn end_volume(&mut self, _info: &VolumeInfo) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A sink that writes each volume to its own file, named by the caller.
///
/// The naming function gets the 1-based index; the naming scheme belongs to
/// the caller (the remote layout), not to this layer.
pub struct FileSink<F: FnMut(u32) -> PathBuf> {
    name: F,
    current: Option<(PathBuf, BufWriter<File>)>,
    written: Vec<PathBuf>,
}

impl<F: FnMut(u32) -> PathBuf> fmt::Debug for FileSink<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSink")
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl<F: FnMut(u32) -> PathBuf> FileSink<F> {
    /// A sink that creates `name(index)` for each volume.
    pub fn new(name: F) -> Self {
        Self {
            name,
            current: None,
            written: Vec::new(),
        }
    }

    /// The files completed so far, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.written
    }
}

impl<F: FnMut(u32) -> PathBuf> VolumeSink for FileSink<F> {
    fn begin_volume(&mut self, index: u32) -> io::Result<()> {
        let path = (self.name)(index);
        let file = File::create(&path)?;
        self.current = Some((path, BufWriter::with_capacity(1 << 20, file)));
        Ok(())
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.current {
            Some((_, out)) => out.write_all(buf),
            None => Err(io::Error::other("write outside a volume")),
        }
    }

    fn end_volume(&mut self, _info: &VolumeInfo) -> io::Result<()> {
        let Some((path, out)) = self.current.take() else {
            return Err(io::Error::other("end of a volume that was not begun"));
        };
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        self.written.push(path);
        Ok(())
    }
}

/// A sink error, carried through the zstd/age writers inside an `io::Error`
/// so the pipeline can tell it apart from a compression error.
#[derive(Debug, thiserror::Error)]
#[error("volume {index}")]
pub(crate) struct SinkFailure {
    pub(crate) index: u32,
    #[source]
    pub(crate) source: io::Error,
}

/// Output counters shared with the progress reporter (the splitter itself
/// sits deep inside the zstd and age writers).
#[derive(Debug, Default)]
pub(crate) struct Flow {
    bytes: Cell<u64>,
    volumes: Cell<usize>,
    /// File bytes read so far (the packer's side).
    read: Cell<u64>,
}

impl Flow {
    pub(crate) fn set_read(&self, read: u64) {
        self.read.set(read);
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.get()
    }

    pub(crate) fn volumes(&self) -> usize {
        self.volumes.get()
    }
}

/// How much smaller than what is left a volume may be before it is closed
/// early: see [`Taper`].
const TAPER_FACTOR: u128 = 2;

/// Makes the last volumes of a split archive smaller, so that the run ends
/// soon after its last byte is compressed.
///
/// Each volume is checked by the target (an MD5 task re-reading it) after it
/// is uploaded, and in spool mode uploaded only once complete; whatever the
/// last volume holds is therefore work left after packing ends. So once the
/// input total is known (from the scan), a volume is closed as soon as it
/// holds at least [`TAPER_FACTOR`] times the output still expected: near the
/// end each volume is about a third of the one before, and checking one
/// overlaps with producing the next. A volume is never cut below `min`, and
/// volumes never exceed the volume size; a wrong estimate only moves where
/// volumes are cut.
#[derive(Debug)]
pub(crate) struct Taper {
    /// The smallest volume cut early: each volume costs a few requests.
    pub(crate) min: u64,
    /// File bytes the pack will read in all, once the scan knows.
    pub(crate) input: InputTotal,
}

impl Taper {
    /// Whether to close a volume of `len` bytes now, `read` of the input's
    /// file bytes having given `written` bytes of output.
    fn cut(&self, len: u64, read: u64, written: u64) -> bool {
        match self.input.get() {
            Some(total) => cut_early(len, self.min, total, read, written),
            None => false,
        }
    }
}

/// See [`Taper`]: true when `len` is at least `min` and at least
/// [`TAPER_FACTOR`] times the output still expected, estimated from the
/// input left at the ratio so far. False once the input is (thought to be)
/// all read: the rest is the compressor's flush, or the estimate was wrong.
fn cut_early(len: u64, min: u64, total: u64, read: u64, written: u64) -> bool {
    if len < min || read == 0 || read >= total {
        return false;
    }
    let left_in = u128::from(total - read);
    // len >= FACTOR * left_in * (written / read), without the division.
    let left_out = TAPER_FACTOR
        .saturating_mul(left_in)
        .saturating_mul(u128::from(written));
    u128::from(len) * u128::from(read) >= left_out
}

/// The end of the write pipeline: cuts volumes, hashes, counts.
pub(crate) struct Splitter<'s> {
    sink: &'s mut dyn VolumeSink,
    volume_size: Option<u64>,
    taper: Option<Taper>,
    index: u32,
    open: bool,
    len: u64,
    digester: Digester,
    total_len: u64,
    volumes: Vec<VolumeInfo>,
    flow: Rc<Flow>,
}

impl<'s> Splitter<'s> {
    pub(crate) fn new(
        sink: &'s mut dyn VolumeSink,
        volume_size: Option<u64>,
        taper: Option<Taper>,
        flow: Rc<Flow>,
    ) -> io::Result<Self> {
        Ok(Self {
            sink,
            volume_size,
            taper,
            index: 0,
            open: false,
            len: 0,
            digester: Digester::start()?,
            total_len: 0,
            volumes: Vec::new(),
            flow,
        })
    }

    fn fail(&self, source: io::Error) -> io::Error {
        io::Error::other(SinkFailure {
            index: self.index,
            source,
        })
    }

    fn taper_cut(&self) -> bool {
        let taper = self.taper.as_ref().filter(|_| self.volume_size.is_some());
        taper.is_some_and(|t| t.cut(self.len, self.flow.read.get(), self.total_len))
    }

    fn begin(&mut self) -> io::Result<()> {
        self.index += 1;
        self.open = true;
        self.len = 0;
        let index = self.index;
        self.sink.begin_volume(index).map_err(|e| self.fail(e))
    }

    fn end(&mut self, last: bool) -> io::Result<()> {
        self.open = false;
        let (md5, sha256) = self.digester.end_volume()?;
        let info = VolumeInfo {
            index: self.index,
            size: self.len,
            md5,
            sha256,
            last,
        };
        self.sink.end_volume(&info).map_err(|e| self.fail(e))?;
        self.volumes.push(info);
        self.flow.volumes.set(self.volumes.len());
        Ok(())
    }

    /// Closes the last volume; returns the volumes and the whole-stream SHA-256.
    pub(crate) fn finish(mut self) -> io::Result<(Vec<VolumeInfo>, String, u64)> {
        if !self.open && self.volumes.is_empty() {
            self.begin()?;
        }
        if self.open {
            self.end(true)?;
        }
        let sha = self.digester.finish()?;
        Ok((self.volumes, sha, self.total_len))
    }
}

impl Write for Splitter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            // A full volume is closed only when more bytes come, so that
            // `end_volume` can tell whether it was the last one.
            if self.open && (self.volume_size == Some(self.len) || self.taper_cut()) {
                self.end(false)?;
            }
            if !self.open {
                self.begin()?;
            }
            let room = self.volume_size.map_or(u64::MAX, |max| max - self.len);
            let n = usize::try_from(room).map_or(rest.len(), |room| room.min(rest.len()));
            let (chunk, tail) = rest.split_at(n);
            self.sink.write(chunk).map_err(|e| self.fail(e))?;
            self.digester.update(chunk)?;
            self.len += n as u64;
            self.total_len += n as u64;
            self.flow.bytes.set(self.total_len);
            rest = tail;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A reader that computes the SHA-256 and size of what passes through.
///
/// Restore wraps the downloaded volumes in it to check them against the
/// manifest while they are being extracted.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    sha: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps a reader.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            sha: Sha256::new(),
            len: 0,
        }
    }

    /// Bytes read so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was read yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The lowercase hex SHA-256 of everything read, and its size.
    pub fn finish(self) -> (String, u64) {
        (hex::encode(self.sha.finalize()), self.len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Md5;

    #[derive(Default)]
    struct Memory {
        volumes: Vec<Vec<u8>>,
        ended: Vec<VolumeInfo>,
    }

    impl VolumeSink for Memory {
        fn begin_volume(&mut self, index: u32) -> io::Result<()> {
            assert_eq!(index as usize, self.volumes.len() + 1);
            self.volumes.push(Vec::new());
            Ok(())
        }
        fn write(&mut self, buf: &[u8]) -> io::Result<()> {
            self.volumes.last_mut().unwrap().extend_from_slice(buf);
            Ok(())
        }
        fn end_volume(&mut self, info: &VolumeInfo) -> io::Result<()> {
            self.ended.push(info.clone());
            Ok(())
        }
    }

    fn split(data: &[u8], size: Option<u64>, chunk: usize) -> (Memory, Vec<VolumeInfo>, String) {
        let mut sink = Memory::default();
        let mut s = Splitter::new(&mut sink, size, None, Rc::default()).unwrap();
        for c in data.chunks(chunk) {
            s.write_all(c).unwrap();
        }
        let (vols, sha, len) = s.finish().unwrap();
        assert_eq!(len, data.len() as u64);
        (sink, vols, sha)
    }

    #[test]
    fn volumes_have_exact_sizes_and_digests() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let (sink, vols, sha) = split(&data, Some(4096), 1000);
        assert_eq!(vols.len(), 3);
        assert_eq!(
            vols.iter().map(|v| v.size).collect::<Vec<_>>(),
            [4096, 4096, 1808]
        );
        assert_eq!(sink.ended, vols);
        for (v, bytes) in vols.iter().zip(&sink.volumes) {
            assert_eq!(v.sha256, hex::encode(Sha256::digest(bytes)));
            assert_eq!(v.md5, hex::encode(Md5::digest(bytes)));
        }
        assert_eq!(sha, hex::encode(Sha256::digest(&data)));
        assert_eq!(sink.volumes.concat(), data);
        assert_eq!(
            vols.iter().map(|v| v.last).collect::<Vec<_>>(),
            [false, false, true]
        );
    }

    #[test]
    fn exact_multiple_makes_no_empty_trailing_volume() {
        let data = vec![7u8; 8192];
        let (_, vols, _) = split(&data, Some(4096), 3000);
        assert_eq!(vols.len(), 2);
        assert!(vols[1].last && !vols[0].last);
    }

    #[test]
    fn cut_early_needs_the_minimum_and_twice_what_is_left() {
        // (len, min, total in, read, written) -> cut
        let cases = [
            ((500, 1000, 10_000, 9_000, 9_000), false), // under the minimum
            ((2000, 1000, 10_000, 9_000, 9_000), true), // 2000 >= 2 * 1000
            ((1999, 1000, 10_000, 9_000, 9_000), false),
            ((1000, 1000, 10_000, 9_000, 4_500), true), // ratio 1/2: 500 left
            ((5000, 1000, 10_000, 0, 0), false),        // nothing read yet
            ((5000, 1000, 10_000, 10_000, 10_000), false), // all read: the flush
            ((5000, 1000, 10_000, 12_000, 12_000), false), // the estimate was low
            ((u64::MAX, 1, u64::MAX, 1, u64::MAX), false), // no overflow
        ];
        for ((len, min, total, read, written), cut) in cases {
            assert_eq!(
                cut_early(len, min, total, read, written),
                cut,
                "{len} {min} {total} {read} {written}"
            );
        }
    }

    #[test]
    fn a_taper_shrinks_the_last_volumes_by_thirds() {
        let data = vec![9u8; 100_000];
        let flow = Rc::new(Flow::default());
        let taper = Taper {
            min: 1000,
            input: InputTotal::known(100_000),
        };
        let mut sink = Memory::default();
        let mut s = Splitter::new(&mut sink, Some(60_000), Some(taper), Rc::clone(&flow)).unwrap();
        for (i, c) in data.chunks(1000).enumerate() {
            s.write_all(c).unwrap();
            // Output as big as the input, as with incompressible data.
            flow.set_read(1000 * (i as u64 + 1));
        }
        let (vols, _, len) = s.finish().unwrap();
        assert_eq!(len, 100_000);
        assert_eq!(
            vols.iter().map(|v| v.size).collect::<Vec<_>>(),
            [60_000, 27_000, 9_000, 3_000, 1_000]
        );
        assert!(vols.last().unwrap().last);
        assert_eq!(sink.volumes.concat(), data);
    }

    #[test]
    fn empty_stream_still_has_one_volume() {
        let (_, vols, _) = split(&[], None, 1);
        assert_eq!(vols.len(), 1);
        assert_eq!(vols[0].size, 0);
        assert!(vols[0].last);
    }

    #[test]
    fn sink_errors_are_tagged_with_the_volume() {
        struct Failing;
        impl VolumeSink for Failing {
            fn begin_volume(&mut self, _: u32) -> io::Result<()> {
                Ok(())
            }
            fn write(&mut self, _: &[u8]) -> io::Result<()> {
                Err(io::Error::other("disk full"))
            }
            fn end_volume(&mut self, _: &VolumeInfo) -> io::Result<()> {
                Ok(())
            }
        }
        let mut sink = Failing;
        let mut s = Splitter::new(&mut sink, None, None, Rc::default()).unwrap();
        let err = s.write_all(b"x").unwrap_err();
        let failure = err.into_inner().unwrap().downcast::<SinkFailure>().unwrap();
        assert_eq!(failure.index, 1);
    }

    #[test]
    fn hashing_reader_hashes_what_passes() {
        let mut r = HashingReader::new(&b"hello world"[..]);
        assert!(r.is_empty());
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        assert_eq!(r.len(), 11);
        let (sha, len) = r.finish();
        assert_eq!(len, 11);
        assert_eq!(sha, hex::encode(Sha256::digest(b"hello world")));
    }
}
