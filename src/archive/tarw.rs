//! Writing tar entries: ustar headers plus PAX extended headers when a
//! value does not fit (long names and link targets, large sizes, ids,
//! out-of-range times, long user/group names).

use std::io::{self, Write};

use tar::{EntryType, Header};

/// Largest value an 11-digit octal header field holds.
const OCTAL_11: u64 = 0o777_7777_7777;
/// Largest value a 7-digit octal header field holds.
const OCTAL_7: u64 = 0o777_7777;
const BLOCK: usize = 512;
const ZEROS: [u8; BLOCK] = [0; BLOCK];

/// The kind of entry being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
}

/// What goes into one header. Paths are raw bytes (Unix paths need not be
/// UTF-8); directories already carry their trailing `/`.
#[derive(Debug)]
pub(crate) struct Meta<'a> {
    pub(crate) kind: Kind,
    pub(crate) path: &'a [u8],
    pub(crate) link: Option<&'a [u8]>,
    pub(crate) size: u64,
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) mtime: i64,
    pub(crate) user: Option<&'a str>,
    pub(crate) group: Option<&'a str>,
}

/// A tar stream being written into `W`.
#[derive(Debug)]
pub(crate) struct TarWriter<W: Write> {
    out: W,
    pax: Vec<u8>,
}

impl<W: Write> TarWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        Self {
            out,
            pax: Vec::with_capacity(1024),
        }
    }

    /// The underlying writer, for the entry's data.
    pub(crate) fn out(&mut self) -> &mut W {
        &mut self.out
    }

    /// Writes the header(s) of one entry; the caller then writes exactly
    /// `meta.size` bytes of data and calls [`Self::pad`].
    pub(crate) fn header(&mut self, meta: &Meta<'_>) -> io::Result<()> {
        let mut header = Header::new_ustar();
        self.pax.clear();
        set_name(
            &mut header.as_old_mut().name,
            meta.path,
            "path",
            &mut self.pax,
        );
        if let Some(link) = meta.link {
            set_name(
                &mut header.as_old_mut().linkname,
                link,
                "linkpath",
                &mut self.pax,
            );
        }
        header.set_entry_type(match meta.kind {
            Kind::File => EntryType::Regular,
            Kind::Dir => EntryType::Directory,
            Kind::Symlink => EntryType::Symlink,
            Kind::HardLink => EntryType::Link,
        });
        header.set_mode(meta.mode & 0o7777);
        header.set_size(meta.size);
        big_number(meta.size, OCTAL_11, "size", &mut self.pax);
        header.set_uid(meta.uid.min(OCTAL_7));
        big_number(meta.uid, OCTAL_7, "uid", &mut self.pax);
        header.set_gid(meta.gid.min(OCTAL_7));
        big_number(meta.gid, OCTAL_7, "gid", &mut self.pax);
        match u64::try_from(meta.mtime) {
            Ok(t) if t <= OCTAL_11 => header.set_mtime(t),
            _ => {
                header.set_mtime(0);
                record(&mut self.pax, "mtime", meta.mtime.to_string().as_bytes());
            }
        }
        set_owner_name(
            &mut header,
            meta.user,
            "uname",
            &mut self.pax,
            Header::set_username,
        );
        set_owner_name(
            &mut header,
            meta.group,
            "gname",
            &mut self.pax,
            Header::set_groupname,
        );
        header.set_cksum();
        if !self.pax.is_empty() {
            self.write_pax(meta)?;
        }
        self.out.write_all(header.as_bytes())
    }

    fn write_pax(&mut self, meta: &Meta<'_>) -> io::Result<()> {
        let mut header = Header::new_ustar();
        let name = b"././@PaxHeader";
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(EntryType::XHeader);
        header.set_mode(0o644);
        header.set_size(self.pax.len() as u64);
        header.set_mtime(u64::try_from(meta.mtime).unwrap_or(0).min(OCTAL_11));
        header.set_cksum();
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(&self.pax)?;
        let len = self.pax.len() as u64;
        self.pad(len)
    }

    /// Pads the data of an entry of `len` bytes to the block size.
    pub(crate) fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem == 0 {
            return Ok(());
        }
        self.out.write_all(&ZEROS[..BLOCK - rem])
    }

    /// Writes the end-of-archive marker and returns the writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&ZEROS)?;
        self.out.write_all(&ZEROS)?;
        Ok(self.out)
    }
}

/// Puts `value` in a fixed NUL-padded field, or a PAX record when too long.
fn set_name(field: &mut [u8], value: &[u8], key: &str, pax: &mut Vec<u8>) {
    if value.len() <= field.len() && !value.contains(&0) {
        field[..value.len()].copy_from_slice(value);
        return;
    }
    let n = field.len().min(value.len());
    field[..n].copy_from_slice(&value[..n]);
    // The field keeps a truncated copy for old readers; others use PAX.
    record(pax, key, value);
}

fn big_number(value: u64, max: u64, key: &str, pax: &mut Vec<u8>) {
    if value > max {
        record(pax, key, value.to_string().as_bytes());
    }
}

fn set_owner_name(
    header: &mut Header,
    name: Option<&str>,
    key: &str,
    pax: &mut Vec<u8>,
    set: fn(&mut Header, &str) -> io::Result<()>,
) {
    let Some(name) = name else { return };
    if set(header, name).is_err() {
        record(pax, key, name.as_bytes());
    }
}

/// Appends one PAX record, `"<len> <key>=<value>\n"`, where `len` counts
/// the whole record including its own digits.
pub(crate) fn record(pax: &mut Vec<u8>, key: &str, value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    loop {
        let total = base + digits(len);
        if total == len {
            break;
        }
        len = total;
    }
    pax.extend_from_slice(len.to_string().as_bytes());
    pax.push(b' ');
    pax.extend_from_slice(key.as_bytes());
    pax.push(b'=');
    pax.extend_from_slice(value);
    pax.push(b'\n');
}

fn digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn pax_record_lengths_count_themselves() {
        for vlen in 0..300 {
            let mut pax = Vec::new();
            record(&mut pax, "path", &vec![b'a'; vlen]);
            let text = String::from_utf8(pax.clone()).unwrap();
            let (len, _) = text.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), pax.len(), "{vlen}");
        }
    }

    fn meta<'a>(kind: Kind, path: &'a [u8], link: Option<&'a [u8]>, size: u64) -> Meta<'a> {
        Meta {
            kind,
            path,
            link,
            size,
            mode: 0o640,
            uid: 5_000_000,
            gid: 7,
            mtime: -5,
            user: Some("a-very-long-user-name-that-does-not-fit-in-32"),
            group: Some("staff"),
        }
    }

    #[test]
    fn the_tar_crate_reads_back_long_and_big_values() {
        let long = format!("{}/{}", "d".repeat(150), "é".repeat(80));
        let target = "t/".repeat(90);
        let mut w = TarWriter::new(Vec::new());
        w.header(&meta(Kind::File, long.as_bytes(), None, 3))
            .unwrap();
        w.out().write_all(b"abc").unwrap();
        w.pad(3).unwrap();
        w.header(&meta(Kind::Symlink, b"short", Some(target.as_bytes()), 0))
            .unwrap();
        let bytes = w.finish().unwrap();

        let mut ar = tar::Archive::new(&bytes[..]);
        let mut entries = ar.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(e.path_bytes().as_ref(), long.as_bytes());
        assert_eq!(e.header().mode().unwrap(), 0o640);
        let pax: Vec<_> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| x.unwrap().key().unwrap().to_string())
            .collect();
        assert_eq!(pax, ["path", "uid", "mtime", "uname"]);
        let mut data = String::new();
        e.read_to_string(&mut data).unwrap();
        assert_eq!(data, "abc");
        let e = entries.next().unwrap().unwrap();
        assert_eq!(e.link_name_bytes().unwrap().as_ref(), target.as_bytes());
        assert!(entries.next().is_none());
    }

    #[test]
    fn sizes_over_8_gib_get_a_pax_record() {
        let mut w = TarWriter::new(Vec::new());
        let mut m = meta(Kind::File, b"big", None, 10 << 30);
        m.uid = 0;
        m.mtime = 1;
        m.user = None;
        w.header(&m).unwrap();
        let bytes = w.out().clone();
        let text = String::from_utf8_lossy(&bytes[512..1024]);
        assert!(text.contains("size=10737418240\n"), "{text}");
        let header = Header::from_byte_slice(&bytes[1024..1536]);
        assert_eq!(header.entry_type(), EntryType::Regular);
        assert_eq!(header.size().unwrap(), 10 << 30, "base-256 fallback too");
    }
}
