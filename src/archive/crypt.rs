//! age encryption on the way out, decryption on the way back.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::PathBuf;

use age::secrecy::SecretString;

use super::error::{Error, Result};
use super::volume::Splitter;
use crate::secret::Secret;

/// A key that can open an encrypted archive.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DecryptKey {
    /// An age identity file (`age-keygen` output; several keys allowed).
    IdentityFile(PathBuf),
    /// The text of identities (`AGE-SECRET-KEY-1...` lines).
    Identities(Secret),
    /// The passphrase of a passphrase-encrypted archive.
    Passphrase(Secret),
}

/// How the archive is encrypted, if at all.
pub(crate) enum Encryption {
    None,
    Recipients(Vec<age::x25519::Recipient>),
    Passphrase(SecretString),
}

impl Encryption {
    pub(crate) fn from_options(recipients: &[String], passphrase: Option<&Secret>) -> Result<Self> {
        match (recipients.is_empty(), passphrase) {
            (true, None) => Ok(Self::None),
            (true, Some(p)) => Ok(Self::Passphrase(SecretString::from(p.expose().to_owned()))),
            (false, None) => recipients
                .iter()
                .map(|r| parse_recipient(r))
                .collect::<Result<_>>()
                .map(Self::Recipients),
            (false, Some(_)) => Err(Error::Invalid {
                field: "recipients",
                reason: "age cannot mix recipients and a passphrase".into(),
            }),
        }
    }

    /// Starts the encrypted (or plain) stream in front of the splitter.
    pub(crate) fn wrap<'s>(self, splitter: Splitter<'s>) -> Result<Out<'s>> {
        let encryptor = match self {
            Self::None => return Ok(Out::Plain(splitter)),
            Self::Passphrase(p) => age::Encryptor::with_user_passphrase(p),
            Self::Recipients(list) => {
                age::Encryptor::with_recipients(list.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(|source| Error::Encrypt { source })?
            }
        };
        encryptor
            .wrap_output(splitter)
            .map(Out::Age)
            .map_err(|source| super::pack::write_error(source, "compress"))
    }
}

/// Parses an `age1...` X25519 public key.
///
/// # Errors
/// [`Error::Recipient`] with age's reason when it does not parse.
pub fn parse_recipient(text: &str) -> Result<age::x25519::Recipient> {
    text.trim()
        .parse()
        .map_err(|reason: &str| Error::Recipient {
            recipient: text.to_owned(),
            reason: reason.to_owned(),
        })
}

/// The encryption stage of the write pipeline.
pub(crate) enum Out<'s> {
    Plain(Splitter<'s>),
    Age(age::stream::StreamWriter<Splitter<'s>>),
}

impl<'s> Out<'s> {
    /// Ends the age stream (its last chunk) and gives the splitter back.
    pub(crate) fn finish(self) -> io::Result<Splitter<'s>> {
        match self {
            Self::Plain(s) => Ok(s),
            Self::Age(w) => w.finish(),
        }
    }
}

impl Write for Out<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Age(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Age(w) => w.flush(),
        }
    }
}

/// Fails with [`Error::WrongKey`] when `keys` are age identities none of
/// which belongs to `recipients` (the manifest's), so that a wrong key is
/// told at once instead of after the first volumes were downloaded. Says
/// nothing when it cannot tell: no recipients, a passphrase, or plugin
/// identities (only the plugin knows their recipient).
///
/// # Errors
/// [`Error::WrongKey`]; [`Error::Identity`] for an identity file that
/// cannot be read.
pub fn check_keys_match(keys: &[DecryptKey], recipients: &[String]) -> Result<()> {
    if keys.is_empty() || recipients.is_empty() {
        return Ok(());
    }
    let mut ours = Vec::new();
    for key in keys {
        let file = match key {
            DecryptKey::IdentityFile(path) => age::IdentityFile::from_file(
                path.to_string_lossy().into_owned(),
            )
            .map_err(|source| Error::Identity {
                path: path.clone(),
                source,
            })?,
            DecryptKey::Identities(text) => {
                age::IdentityFile::from_buffer(text.expose().as_bytes()).map_err(|source| {
                    Error::Identity {
                        path: PathBuf::from("<identities>"),
                        source,
                    }
                })?
            }
            DecryptKey::Passphrase(_) => return Ok(()),
        };
        let mut public = Vec::new();
        if file.write_recipients_file(&mut public).is_err() {
            return Ok(());
        }
        ours.extend(String::from_utf8_lossy(&public).lines().map(str::to_owned));
    }
    match ours
        .iter()
        // Bech32 ignores case, and a config may hold `AGE1...`.
        .any(|key| {
            recipients
                .iter()
                .any(|r| r.trim().eq_ignore_ascii_case(key))
        }) {
        true => Ok(()),
        false => Err(Error::WrongKey {
            keys: ours.join(", "),
            recipients: recipients.join(", "),
        }),
    }
}

type Identities = Vec<Box<dyn age::Identity + Send + Sync>>;

/// Read buffer in front of the age parser.
const READ_BUF: usize = 256 * 1024;

fn load_identities(keys: &[DecryptKey]) -> Result<Identities> {
    let mut all: Identities = Vec::new();
    for key in keys {
        match key {
            DecryptKey::IdentityFile(path) => {
                let file = age::IdentityFile::from_file(path.to_string_lossy().into_owned())
                    .map_err(|source| Error::Identity {
                        path: path.clone(),
                        source,
                    })?;
                all.extend(
                    file.into_identities()
                        .map_err(|source| Error::Decrypt { source })?,
                );
            }
            DecryptKey::Identities(text) => {
                let file =
                    age::IdentityFile::from_buffer(text.expose().as_bytes()).map_err(|source| {
                        Error::Identity {
                            path: PathBuf::from("<identities>"),
                            source,
                        }
                    })?;
                all.extend(
                    file.into_identities()
                        .map_err(|source| Error::Decrypt { source })?,
                );
            }
            DecryptKey::Passphrase(p) => all.push(Box::new(age::scrypt::Identity::new(
                SecretString::from(p.expose().to_owned()),
            ))),
        }
    }
    Ok(all)
}

/// Opens an age stream with the given keys; `armored` for the PEM-like
/// text form (`age -a`), binary otherwise.
pub(crate) fn decrypt<'a, R: Read + Send + 'a>(
    input: R,
    armored: bool,
    keys: &[DecryptKey],
) -> Result<Box<dyn Read + Send + 'a>> {
    if keys.is_empty() {
        return Err(Error::NeedIdentity);
    }
    let identities = load_identities(keys)?;
    let input = BufReader::with_capacity(READ_BUF, input);
    if armored {
        let armor = BufReader::with_capacity(READ_BUF, age::armor::ArmoredReader::new(input));
        open_age(armor, &identities)
    } else {
        open_age(input, &identities)
    }
}

fn open_age<'a, R: BufRead + Send + 'a>(
    input: R,
    identities: &Identities,
) -> Result<Box<dyn Read + Send + 'a>> {
    let decryptor =
        age::Decryptor::new_buffered(input).map_err(|source| Error::Decrypt { source })?;
    let reader = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|source| Error::Decrypt { source })?;
    Ok(Box::new(reader))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_recipient_names_itself() {
        let err = parse_recipient("age1nope").unwrap_err();
        assert!(err.to_string().contains("age1nope"), "{err}");
    }

    #[test]
    fn recipients_and_passphrase_do_not_mix() {
        let key = age::x25519::Identity::generate().to_public().to_string();
        let err = Encryption::from_options(&[key], Some(&Secret::new("pw")))
            .err()
            .unwrap();
        assert!(matches!(err, Error::Invalid { .. }));
    }

    #[test]
    fn no_key_for_an_encrypted_archive_is_a_clear_error() {
        let err = decrypt(&b"age-encryption.org/v1\n"[..], false, &[])
            .err()
            .unwrap();
        assert!(matches!(err, Error::NeedIdentity));
    }
}
