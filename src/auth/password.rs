//! Password checking compatible with Mosquitto's `password_file` (as written by `mosquitto_passwd`).
//!
//! Two hash formats are understood, both as Mosquitto stores them after `user:`:
//! - `$7$ITERATIONS$SALT$HASH`: PBKDF2-HMAC-SHA512 (Mosquitto 2.x default, 101 iterations,
//!   12-byte salt, 64-byte hash);
//! - `$6$SALT$HASH`: SHA-512 over `password || salt` (Mosquitto 1.x, `mosquitto_passwd -H sha512`).
//!
//! Salt and hash are standard base64. Nothing here logs; errors name the file, line and reason
//! but never a password or a hash, so they can be shown to an operator as they are.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// PBKDF2 iteration count `mosquitto_passwd` uses by default (Mosquitto 2.x `PW_DEFAULT_ITERATIONS`).
pub const DEFAULT_ITERATIONS: u32 = 101;

/// Salt length `mosquitto_passwd` generates (Mosquitto `SALT_LEN`).
pub const SALT_LEN: usize = 12;

/// Length of a SHA-512 digest, the only hash length either format stores.
const HASH_LEN: usize = 64;

pub use crate::config::security::{UserConfig, PLAINTEXT_REJECTED};

/// Mosquitto writes padded base64, but hand-made files sometimes drop the padding; OpenSSL,
/// which Mosquitto decodes with, does not care either way, so neither do we.
const B64_DECODE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a stored password hash string could not be understood (never contains the hash itself).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HashError {
    /// The string is not `$6$...` or `$7$...` (plaintext, crypt(3) variants, empty, ...).
    #[error("unsupported password hash format (expected `$7$` PBKDF2-SHA512 or `$6$` SHA-512, as written by mosquitto_passwd)")]
    UnsupportedScheme,
    /// The right number of `$`-separated fields is missing.
    #[error("malformed {scheme} password hash: expected {expected}")]
    Malformed {
        /// `$6$` or `$7$`.
        scheme: &'static str,
        /// The expected layout.
        expected: &'static str,
    },
    /// The iteration count is not a positive integer.
    #[error("invalid PBKDF2 iteration count (must be a positive integer)")]
    BadIterations,
    /// Salt or hash is not valid base64.
    #[error("password hash {0} is not valid base64")]
    BadBase64(&'static str),
    /// The salt decodes to nothing.
    #[error("password hash salt is empty")]
    EmptySalt,
    /// The hash is not a 64-byte SHA-512 digest.
    #[error("password hash has {0} bytes, expected 64")]
    BadHashLength(usize),
}

/// Errors from loading, parsing or writing password data; they name where and why, never a secret.
#[derive(Debug, Error)]
pub enum AuthError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A line of a password file is not acceptable.
    #[error("{}:{line}: {reason}", path.display())]
    Parse {
        /// The file (or a description of the configuration source).
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A user given inline in the configuration is not acceptable.
    #[error("user `{username}`: {reason}")]
    InvalidUser {
        /// The offending username (usernames are not secret).
        username: String,
        /// What is wrong.
        reason: String,
    },
    /// A username that cannot be stored in a Mosquitto password file.
    #[error("invalid username: {0}")]
    InvalidUsername(&'static str),
}

/// Outcome of checking a username and password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCheck {
    /// The user exists and the password is right.
    Ok,
    /// The user exists and the password is wrong.
    BadPassword,
    /// No such user.
    UnknownUser,
}

#[derive(Clone)]
enum Scheme {
    /// `$6$`: one round of SHA-512 over `password || salt`.
    Sha512,
    /// `$7$`: PBKDF2-HMAC-SHA512 with this many iterations.
    Pbkdf2Sha512 { iterations: u32 },
}

/// What SCRAM-SHA-512 needs of a `$7$` entry: its PBKDF2-HMAC-SHA512 output is SCRAM's
/// SaltedPassword (see `super::scram`).
pub struct ScramSecret {
    /// The salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// PBKDF2-HMAC-SHA512(password, salt, iterations).
    pub salted_password: [u8; HASH_LEN],
}

/// A parsed Mosquitto password hash (`$7$...` or `$6$...`).
#[derive(Clone)]
pub struct PasswordHash {
    scheme: Scheme,
    salt: Vec<u8>,
    hash: [u8; HASH_LEN],
}

// Hand-written so that a `{:?}` in a log line never leaks the digest or salt.
impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("PasswordHash");
        match self.scheme {
            Scheme::Sha512 => d.field("scheme", &"sha512"),
            Scheme::Pbkdf2Sha512 { iterations } => d
                .field("scheme", &"sha512-pbkdf2")
                .field("iterations", &iterations),
        };
        d.finish_non_exhaustive()
    }
}

impl PasswordHash {
    /// Parses the part of a password file line after `user:`.
    pub fn parse(s: &str) -> Result<Self, HashError> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("$7$") {
            let expected = "$7$ITERATIONS$SALT$HASH";
            let mut parts = rest.split('$');
            let (Some(iter), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(HashError::Malformed {
                    scheme: "$7$",
                    expected,
                });
            };
            let iterations = match iter.parse::<u32>() {
                Ok(n) if n > 0 => n,
                _ => return Err(HashError::BadIterations),
            };
            Self::from_parts(Scheme::Pbkdf2Sha512 { iterations }, salt, hash)
        } else if let Some(rest) = s.strip_prefix("$6$") {
            let expected = "$6$SALT$HASH";
            let mut parts = rest.split('$');
            let (Some(salt), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(HashError::Malformed {
                    scheme: "$6$",
                    expected,
                });
            };
            Self::from_parts(Scheme::Sha512, salt, hash)
        } else {
            Err(HashError::UnsupportedScheme)
        }
    }

    fn from_parts(scheme: Scheme, salt_b64: &str, hash_b64: &str) -> Result<Self, HashError> {
        let salt = B64_DECODE
            .decode(salt_b64)
            .map_err(|_| HashError::BadBase64("salt"))?;
        if salt.is_empty() {
            return Err(HashError::EmptySalt);
        }
        let hash = B64_DECODE
            .decode(hash_b64)
            .map_err(|_| HashError::BadBase64("hash"))?;
        let hash: [u8; HASH_LEN] = hash
            .as_slice()
            .try_into()
            .map_err(|_| HashError::BadHashLength(hash.len()))?;
        Ok(Self { scheme, salt, hash })
    }

    /// True when `password` hashes to the stored digest (compared in constant time).
    pub fn verify(&self, password: &[u8]) -> bool {
        let computed = digest(&self.scheme, password, &self.salt);
        bool::from(computed.ct_eq(&self.hash))
    }
}

fn digest(scheme: &Scheme, password: &[u8], salt: &[u8]) -> [u8; HASH_LEN] {
    let mut out = [0u8; HASH_LEN];
    match *scheme {
        Scheme::Sha512 => {
            // Mosquitto 1.x: EVP_DigestUpdate(password) then EVP_DigestUpdate(salt).
            let mut h = Sha512::new();
            h.update(password);
            h.update(salt);
            out.copy_from_slice(&h.finalize());
        }
        Scheme::Pbkdf2Sha512 { iterations } => {
            pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
        }
    }
    out
}

/// Hashes `password` the way Mosquitto 2.x `mosquitto_passwd` does: `$7$101$SALT$HASH`, random 12-byte salt.
pub fn hash_password(password: &[u8]) -> String {
    let mut salt = [0u8; SALT_LEN];
    // The OS RNG failing is not something a caller can fix or should paper over with a weak salt.
    getrandom::getrandom(&mut salt).expect("operating system random number generator failed");
    hash_password_with_salt(password, &salt, DEFAULT_ITERATIONS)
}

/// Deterministic form of [`hash_password`] (for tests and reproducible fixtures); `iterations` must be > 0.
pub fn hash_password_with_salt(password: &[u8], salt: &[u8], iterations: u32) -> String {
    let iterations = iterations.max(1);
    let hash = digest(&Scheme::Pbkdf2Sha512 { iterations }, password, salt);
    let b64 = base64::engine::general_purpose::STANDARD;
    format!("$7${iterations}${}${}", b64.encode(salt), b64.encode(hash))
}

/// Rejects usernames that a password file line could not represent unambiguously.
fn check_username(username: &str) -> Result<(), &'static str> {
    if username.is_empty() {
        return Err("username is empty");
    }
    if username.contains(':') {
        return Err("username contains ':'");
    }
    if username.contains(['\n', '\r', '\0']) {
        return Err("username contains a line break or NUL");
    }
    // Mosquitto trims blanks around the username and skips `#` lines, so such a user could never log in.
    if username.starts_with('#') {
        return Err("username starts with '#'");
    }
    if username.trim() != username {
        return Err("username has leading or trailing whitespace");
    }
    if username.len() > 65_535 {
        return Err("username is longer than 65535 bytes");
    }
    Ok(())
}

/// Splits a password file line into (username, hash text); `None` for blank and comment lines.
fn split_line(line: &str) -> Option<Result<(&str, &str), &'static str>> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    Some(match trimmed.split_once(':') {
        Some((user, hash)) => {
            let user = user.trim();
            if user.is_empty() {
                Err("empty username")
            } else {
                Ok((user, hash.trim()))
            }
        }
        None => Err("expected `username:hash`"),
    })
}

/// A fixed hash to burn comparable time on for unknown users, so response time does not reveal
/// which usernames exist. Salt and digest are arbitrary; nothing can match it meaningfully.
fn dummy_hash() -> PasswordHash {
    PasswordHash {
        scheme: Scheme::Pbkdf2Sha512 {
            iterations: DEFAULT_ITERATIONS,
        },
        salt: vec![0u8; SALT_LEN],
        hash: [0u8; HASH_LEN],
    }
}

/// The users of a Mosquitto password file (or of inline configuration), keyed by username.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    users: HashMap<String, PasswordHash>,
    /// Passwords proven since this table was loaded (shared by its clones).
    verified: std::sync::Arc<VerifiedCache>,
}

/// Which user proved which password since the table was loaded, so that a storm of
/// reconnecting devices (a network blip, a load balancer failing over) does not pay PBKDF2
/// again for a password already checked against the same table.
///
/// The check is not weakened: every CONNECT still has to present the password, a wrong one
/// never matches and goes through PBKDF2 and the login back-off as before. What is kept is
/// an HMAC-SHA256 of user and password under a random key made for this table (never the
/// password), one per user (a user's newest proven password replaces the previous one),
/// and a reload builds a new table with an empty cache, so a changed password file is
/// always checked afresh.
#[derive(Debug)]
struct VerifiedCache {
    key: [u8; 32],
    proven: parking_lot::Mutex<HashMap<String, [u8; 32]>>,
}

impl Default for VerifiedCache {
    fn default() -> Self {
        let mut key = [0u8; 32];
        // Without randomness the cache stays off (an all-zero key is never used).
        let usable = getrandom::getrandom(&mut key).is_ok();
        VerifiedCache {
            key: if usable { key } else { [0; 32] },
            proven: parking_lot::Mutex::new(HashMap::new()),
        }
    }
}

impl VerifiedCache {
    fn tag(&self, username: &str, password: &[u8]) -> Option<[u8; 32]> {
        use hmac::Mac;
        if self.key == [0; 32] {
            return None;
        }
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key).ok()?;
        mac.update(&(username.len() as u64).to_be_bytes());
        mac.update(username.as_bytes());
        mac.update(password);
        Some(mac.finalize().into_bytes().into())
    }

    fn proven(&self, username: &str, tag: &[u8; 32]) -> bool {
        self.proven
            .lock()
            .get(username)
            .is_some_and(|known| bool::from(known.ct_eq(tag)))
    }

    fn remember(&self, username: &str, tag: [u8; 32]) {
        self.proven.lock().insert(username.to_owned(), tag);
    }
}

impl PasswordFile {
    /// Parses password file text; `source` is only used to name the file in errors.
    pub fn parse(text: &str, source: &Path) -> Result<Self, AuthError> {
        let mut users = HashMap::new();
        for (idx, line) in text.lines().enumerate() {
            let err = |reason: String| AuthError::Parse {
                path: source.to_path_buf(),
                line: idx + 1,
                reason,
            };
            let (user, hash) = match split_line(line) {
                None => continue,
                Some(Ok(pair)) => pair,
                Some(Err(reason)) => return Err(err(reason.to_string())),
            };
            let hash = PasswordHash::parse(hash).map_err(|e| err(format!("user `{user}`: {e}")))?;
            // Mosquitto's hash table makes a duplicate ambiguous; refuse rather than guess which wins.
            if users.insert(user.to_string(), hash).is_some() {
                return Err(err(format!("user `{user}` is listed more than once")));
            }
        }
        Ok(Self {
            users,
            verified: Default::default(),
        })
    }

    /// Reads and parses a password file.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = fs::read_to_string(path).map_err(|source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Builds the user table from inline configuration users, rejecting bad hashes and duplicates.
    pub fn from_users(users: &[UserConfig]) -> Result<Self, AuthError> {
        let mut map = HashMap::new();
        for u in users {
            let hash = validate_user(u)?;
            if map.insert(u.username.clone(), hash).is_some() {
                return Err(AuthError::InvalidUser {
                    username: u.username.clone(),
                    reason: "listed more than once".to_string(),
                });
            }
        }
        Ok(Self {
            users: map,
            verified: Default::default(),
        })
    }

    /// Checks a username and password.
    pub fn verify(&self, username: &str, password: &[u8]) -> PasswordCheck {
        match self.users.get(username) {
            Some(hash) => {
                let tag = self.verified.tag(username, password);
                if tag
                    .as_ref()
                    .is_some_and(|t| self.verified.proven(username, t))
                {
                    return PasswordCheck::Ok;
                }
                if !hash.verify(password) {
                    return PasswordCheck::BadPassword;
                }
                if let Some(tag) = tag {
                    self.verified.remember(username, tag);
                }
                PasswordCheck::Ok
            }
            None => {
                let _ = dummy_hash().verify(password);
                PasswordCheck::UnknownUser
            }
        }
    }

    /// The SCRAM-SHA-512 secret of a `$7$` user (`None` for unknown and `$6$` users).
    pub fn scram_secret(&self, username: &str) -> Option<ScramSecret> {
        let hash = self.users.get(username)?;
        match hash.scheme {
            Scheme::Pbkdf2Sha512 { iterations } => Some(ScramSecret {
                salt: hash.salt.clone(),
                iterations,
                salted_password: hash.hash,
            }),
            Scheme::Sha512 => None,
        }
    }

    /// True when the user is listed.
    pub fn contains(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Adds or updates one user in a password file, keeping all other lines and their order.
///
/// The file is created if missing and replaced atomically (temporary file in the same
/// directory, then rename) with mode 0600, like `mosquitto_passwd`.
pub fn set_user(path: &Path, username: &str, password: &[u8]) -> Result<(), AuthError> {
    check_username(username).map_err(AuthError::InvalidUsername)?;
    let new_line = format!("{username}:{}", hash_password(password));
    rewrite(path, |existing| {
        let mut out = String::with_capacity(existing.len() + new_line.len() + 1);
        let mut replaced = false;
        for line in existing.lines() {
            let is_user = matches!(split_line(line), Some(Ok((u, _))) if u == username);
            if !is_user {
                out.push_str(line);
                out.push('\n');
            } else if !replaced {
                out.push_str(&new_line);
                out.push('\n');
                replaced = true;
            }
            // Later duplicates of the same user are dropped: one line per user is what
            // Mosquitto expects.
        }
        if !replaced {
            out.push_str(&new_line);
            out.push('\n');
        }
        Ok(out)
    })
}

/// Creates (or overwrites) a password file holding only this user (`mosquitto_passwd -c`).
pub fn create_with_user(path: &Path, username: &str, password: &[u8]) -> Result<(), AuthError> {
    check_username(username).map_err(AuthError::InvalidUsername)?;
    let line = format!("{username}:{}\n", hash_password(password));
    write_atomically(path, line.as_bytes()).map_err(|source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes a user from a password file, keeping every other line (`mosquitto_passwd -D`).
/// Returns whether the user was there; the file is not rewritten when it was not.
pub fn delete_user(path: &Path, username: &str) -> Result<bool, AuthError> {
    let mut found = false;
    let text = read_existing(path, false)?;
    let out: String = text
        .lines()
        .filter(|line| {
            let is_user = matches!(split_line(line), Some(Ok((u, _))) if u == username);
            found |= is_user;
            !is_user
        })
        .flat_map(|l| [l, "\n"])
        .collect();
    if found {
        write_atomically(path, out.as_bytes()).map_err(|source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(found)
}

/// Hashes every plaintext password of a `user:password` file in place
/// (`mosquitto_passwd -U`). Lines that already hold a `$6$` or `$7$` hash are kept as they
/// are (Mosquitto would hash the hash and lock the user out); returns how many were hashed.
pub fn upgrade_plaintext(path: &Path) -> Result<usize, AuthError> {
    let text = read_existing(path, false)?;
    let mut upgraded = 0;
    let mut out = String::with_capacity(text.len() * 2);
    for (i, line) in text.lines().enumerate() {
        match split_line(line) {
            Some(Ok((user, secret)))
                if !secret.starts_with("$6$") && !secret.starts_with("$7$") =>
            {
                check_username(user).map_err(|reason| AuthError::Parse {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: reason.to_string(),
                })?;
                out.push_str(&format!("{user}:{}\n", hash_password(secret.as_bytes())));
                upgraded += 1;
            }
            Some(Err(reason)) => {
                return Err(AuthError::Parse {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: reason.to_string(),
                })
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if upgraded > 0 {
        write_atomically(path, out.as_bytes()).map_err(|source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(upgraded)
}

/// The file's text; a missing file is empty when `missing_ok`, an error otherwise.
fn read_existing(path: &Path, missing_ok: bool) -> Result<String, AuthError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if missing_ok && e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(AuthError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Rewrites a password file (created when missing) from its current text, atomically.
fn rewrite(
    path: &Path,
    f: impl FnOnce(&str) -> Result<String, AuthError>,
) -> Result<(), AuthError> {
    let existing = read_existing(path, true)?;
    let out = f(&existing)?;
    write_atomically(path, out.as_bytes()).map_err(|source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut nonce = [0u8; 8];
    getrandom::getrandom(&mut nonce).map_err(|e| io::Error::other(e.to_string()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", u64::from_le_bytes(nonce)));
    let tmp = dir.join(tmp_name);

    let result = (|| {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Persist the rename itself; failure here does not undo a completed replace, so ignore it.
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Checks an inline user's name and parses its hash (`security.users`).
pub fn validate_user(user: &UserConfig) -> Result<PasswordHash, AuthError> {
    let invalid = |reason: String| AuthError::InvalidUser {
        username: user.username.clone(),
        reason,
    };
    check_username(&user.username).map_err(|r| invalid(r.to_string()))?;
    PasswordHash::parse(&user.password_hash).map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by the real `mosquitto_passwd` 2.0.11: `-b -c f alice secret`, `-b f bob 'p@ss:w0rd ü'`,
    /// and `-H sha512 -b f carol hunter2`.
    const MOSQUITTO_FILE: &str = "\
alice:$7$101$1uqlZ+OhuZQS7Vny$964e0McGEqpi9huvco/+Ymg4ixucbAmZr4gtqHMC804PkEd/G2ijyDABnRJ9UpeI6h/vMVHwV/+7T+C/ZBzuAQ==
bob:$7$101$I0NS2LwUMEVL9gZa$09sf/i420D1WWDFSxvMPEyKwWPWagvZmpm9gqGfwh1t+Cmt9ZVWAk76rE8VOtBwv5jTW6eka9b3x11DNOH4CKw==
carol:$6$f6917AIlLAi3lt4F$ZMgHNywtdZdxogyR68gINjcprG5Lt9duVi/2EjjKqXbgXCPTVw4xpGm92DqWWx/w/8udW8zVzR1UiuFiEeWClQ==
";

    fn src() -> &'static Path {
        Path::new("/etc/mqtt/passwd")
    }

    #[test]
    fn mosquitto_passwd_fixtures_verify() {
        let pf = PasswordFile::parse(MOSQUITTO_FILE, src()).expect("parses");
        assert_eq!(pf.len(), 3);
        assert_eq!(pf.verify("alice", b"secret"), PasswordCheck::Ok);
        assert_eq!(pf.verify("alice", b"Secret"), PasswordCheck::BadPassword);
        assert_eq!(pf.verify("alice", b""), PasswordCheck::BadPassword);
        assert_eq!(
            pf.verify("bob", "p@ss:w0rd ü".as_bytes()),
            PasswordCheck::Ok
        );
        assert_eq!(pf.verify("carol", b"hunter2"), PasswordCheck::Ok);
        assert_eq!(pf.verify("carol", b"hunter3"), PasswordCheck::BadPassword);
        assert_eq!(pf.verify("dave", b"secret"), PasswordCheck::UnknownUser);
        assert!(pf.contains("bob") && !pf.contains("dave"));
    }

    #[test]
    fn a_proven_password_is_remembered_without_accepting_any_other() {
        let pf = PasswordFile::parse(MOSQUITTO_FILE, src()).expect("parses");
        for _ in 0..3 {
            assert_eq!(pf.verify("alice", b"secret"), PasswordCheck::Ok);
        }
        assert_eq!(pf.verified.proven.lock().len(), 1);
        // A wrong password, another user's password, and a prefix never match the cache.
        assert_eq!(pf.verify("alice", b"secre"), PasswordCheck::BadPassword);
        assert_eq!(pf.verify("alice", b"secretx"), PasswordCheck::BadPassword);
        assert_eq!(pf.verify("carol", b"secret"), PasswordCheck::BadPassword);
        assert_eq!(pf.verify("dave", b"secret"), PasswordCheck::UnknownUser);
        // Only an HMAC is kept, never the password.
        let kept = pf.verified.proven.lock()["alice"];
        assert!(!kept.windows(6).any(|w| w == b"secret"));
        // A reloaded table (a new file) starts with nothing proven.
        let reloaded = PasswordFile::parse(MOSQUITTO_FILE, src()).expect("parses");
        assert!(reloaded.verified.proven.lock().is_empty());
        assert_ne!(reloaded.verified.key, pf.verified.key);
    }

    #[test]
    fn sha512_scheme_is_password_then_salt() {
        let salt = b"0123456789ab";
        let mut h = Sha512::new();
        h.update(b"pw");
        h.update(salt);
        let b64 = base64::engine::general_purpose::STANDARD;
        let line = format!("$6${}${}", b64.encode(salt), b64.encode(h.finalize()));
        let hash = PasswordHash::parse(&line).expect("parses");
        assert!(hash.verify(b"pw"));
        assert!(!hash.verify(b"pw "));
    }

    #[test]
    fn hash_password_matches_mosquitto_layout() {
        let h = hash_password(b"secret");
        let parts: Vec<&str> = h.split('$').collect();
        assert_eq!(parts[..3], ["", "7", "101"]);
        assert_eq!(parts[3].len(), 16, "12-byte salt is 16 base64 chars");
        assert_eq!(parts[4].len(), 88, "64-byte hash is 88 base64 chars");
        assert!(PasswordHash::parse(&h).expect("parses").verify(b"secret"));
        assert_ne!(h, hash_password(b"secret"), "salt must be random");

        // Same salt and password as the mosquitto_passwd fixture gives the same line.
        let salt = B64_DECODE.decode("1uqlZ+OhuZQS7Vny").expect("b64");
        let again = hash_password_with_salt(b"secret", &salt, 101);
        assert_eq!(
            format!("alice:{again}"),
            MOSQUITTO_FILE.lines().next().expect("line")
        );
    }

    #[test]
    fn comments_blank_lines_whitespace_and_crlf() {
        let h = hash_password_with_salt(b"x", b"saltsaltsalt", 2);
        let text = format!("# comment\n\n   \n  u1 : {h}  \r\n\t# indented comment\nu2:{h}");
        let pf = PasswordFile::parse(&text, src()).expect("parses");
        assert_eq!(pf.len(), 2);
        assert_eq!(pf.verify("u1", b"x"), PasswordCheck::Ok);
        assert_eq!(pf.verify("u2", b"x"), PasswordCheck::Ok);
    }

    #[test]
    fn unpadded_base64_accepted() {
        let h = hash_password_with_salt(b"x", b"salt", 3);
        let unpadded = h.replace('=', "");
        assert!(PasswordHash::parse(&unpadded).expect("parses").verify(b"x"));
    }

    #[test]
    fn parse_errors_name_file_line_reason_and_no_secret() {
        let good = hash_password_with_salt(b"x", b"saltsaltsalt", 2);
        let cases: &[(String, usize, &str)] = &[
            (format!("a:{good}\nnocolon"), 2, "expected `username:hash`"),
            (format!(":{good}"), 1, "empty username"),
            (
                "u:plaintextpw".into(),
                1,
                "unsupported password hash format",
            ),
            ("u:".into(), 1, "unsupported password hash format"),
            ("u:$7$abc$c2FsdA==$aGFzaA==".into(), 1, "iteration count"),
            ("u:$7$0$c2FsdA==$aGFzaA==".into(), 1, "iteration count"),
            ("u:$7$101$c2FsdA==".into(), 1, "malformed $7$"),
            ("u:$6$c2FsdA==".into(), 1, "malformed $6$"),
            ("u:$6$!!!$aGFzaA==".into(), 1, "salt is not valid base64"),
            (
                "u:$6$c2FsdA==$aGFzaA==".into(),
                1,
                "has 4 bytes, expected 64",
            ),
            ("u:$6$$aGFzaA==".into(), 1, "salt is empty"),
            (
                format!("\n\na:{good}\na:{good}"),
                4,
                "listed more than once",
            ),
        ];
        for (text, line, reason) in cases {
            let err = PasswordFile::parse(text, src()).expect_err(text);
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("/etc/mqtt/passwd:{line}: ")),
                "{msg}"
            );
            assert!(msg.contains(reason), "{msg} lacks {reason}");
            assert!(
                !msg.contains("aGFzaA") && !msg.contains("plaintextpw"),
                "{msg}"
            );
            assert!(!msg.contains(&good[10..]), "{msg}");
        }
    }

    #[test]
    fn debug_output_redacts_hash() {
        let h = hash_password_with_salt(b"x", b"saltsaltsalt", 2);
        let dbg = format!("{:?}", PasswordHash::parse(&h).expect("parses"));
        assert!(
            dbg.contains("iterations: 2") && !dbg.contains(&h[20..]),
            "{dbg}"
        );
        let u = UserConfig {
            username: "a".into(),
            password_hash: h.clone(),
        };
        assert!(!format!("{u:?}").contains(&h[20..]));
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let mut n = [0u8; 8];
        getrandom::getrandom(&mut n).expect("rng");
        let d = std::env::temp_dir().join(format!("auth-test-{tag}-{}", u64::from_le_bytes(n)));
        fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn set_user_creates_updates_and_preserves() {
        let dir = temp_dir("setuser");
        let path = dir.join("pw");
        set_user(&path, "alice", b"one").expect("create");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Hand-edit: a comment, a blank line and another user, no trailing newline.
        let mut text = fs::read_to_string(&path).expect("read");
        text.push_str("# ops team\n\n");
        text.push_str(MOSQUITTO_FILE.lines().nth(2).expect("carol"));
        fs::write(&path, &text).expect("write");

        set_user(&path, "bob", b"two").expect("append");
        set_user(&path, "alice", b"three").expect("update");
        let after = fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = after.lines().collect();
        assert_eq!(lines.len(), 5, "{after}");
        assert!(lines[0].starts_with("alice:$7$101$"));
        assert_eq!(lines[1], "# ops team");
        assert_eq!(lines[2], "");
        assert!(lines[3].starts_with("carol:$6$"));
        assert!(lines[4].starts_with("bob:$7$101$"));
        assert!(after.ends_with('\n'));

        let pf = PasswordFile::load(&path).expect("load");
        assert_eq!(pf.verify("alice", b"three"), PasswordCheck::Ok);
        assert_eq!(pf.verify("alice", b"one"), PasswordCheck::BadPassword);
        assert_eq!(pf.verify("bob", b"two"), PasswordCheck::Ok);
        assert_eq!(pf.verify("carol", b"hunter2"), PasswordCheck::Ok);

        let leftovers: Vec<_> = fs::read_dir(&dir).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "temporary file left behind");
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn set_user_rejects_bad_usernames() {
        let dir = temp_dir("badname");
        let path = dir.join("pw");
        for bad in ["", "a:b", "a\nb", "a\rb", "#root", " a", "a "] {
            let err = set_user(&path, bad, b"pw").expect_err(bad);
            assert!(matches!(err, AuthError::InvalidUsername(_)), "{bad:?}");
        }
        assert!(!path.exists());
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn load_missing_file_names_path() {
        let err = PasswordFile::load(Path::new("/nonexistent/pw")).expect_err("missing");
        assert!(err.to_string().starts_with("/nonexistent/pw: "), "{err}");
    }

    #[test]
    fn user_config_yaml() {
        let h = hash_password_with_salt(b"s3cret", b"saltsaltsalt", 5);
        let yaml = format!("- username: alice\n  password_hash: '{h}'\n");
        let users: Vec<UserConfig> = serde_yaml_ng::from_str(&yaml).expect("parses");
        let pf = PasswordFile::from_users(&users).expect("valid");
        assert_eq!(pf.verify("alice", b"s3cret"), PasswordCheck::Ok);

        let err =
            serde_yaml_ng::from_str::<Vec<UserConfig>>("- username: alice\n  password: hunter2\n")
                .expect_err("plaintext");
        let msg = err.to_string();
        assert!(msg.contains(PLAINTEXT_REJECTED), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");

        let err = serde_yaml_ng::from_str::<Vec<UserConfig>>(&format!(
            "- username: alice\n  password_hash: '{h}'\n  role: admin\n"
        ))
        .expect_err("unknown");
        assert!(err.to_string().contains("unknown field `role`"), "{err}");

        let err =
            serde_yaml_ng::from_str::<Vec<UserConfig>>("- username: alice\n").expect_err("missing");
        assert!(err.to_string().contains("password_hash"), "{err}");

        let bad = UserConfig {
            username: "alice".into(),
            password_hash: "hunter2".into(),
        };
        let msg = validate_user(&bad).expect_err("bad hash").to_string();
        assert!(
            msg.contains("user `alice`") && !msg.contains("hunter2"),
            "{msg}"
        );

        let dup = vec![users[0].clone(), users[0].clone()];
        assert!(PasswordFile::from_users(&dup).is_err());
    }
}
