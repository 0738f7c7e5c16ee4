//! Host capabilities of plugin API 0.2: outbound HTTP, a per-plugin key-value store, and
//! publishing. Each is denied unless the plugin's config entry grants it; a denied call
//! returns an error string naming the missing grant (it never traps, so a plugin can fall
//! back).
//!
//! The key-value store outlives plugin reloads (the host keeps one per plugin name) and,
//! when persistence is on, is written behind to `<persistence.path>/plugin-kv/<name>.json`
//! at most every [`KV_FLUSH_INTERVAL`] and when the store is dropped.

use super::config::{Capabilities, HttpGrant, PluginConfig};
use crate::model::Message;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tracing::warn;

/// How often a changed key-value store is written to disk.
pub const KV_FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// Longest key accepted by the key-value store.
pub const KV_MAX_KEY: usize = 1024;

/// What one plugin may use, and the shared state behind it; one per loaded plugin, shared by
/// its instances.
pub(crate) struct PluginCaps {
    /// Plugin name, for error messages.
    pub plugin: Arc<str>,
    /// What the config grants.
    pub grants: Capabilities,
    /// The plugin's store, when `kv` is granted.
    pub kv: Option<Arc<KvStore>>,
    /// HTTP client, when `http` is granted (no redirects: they could leave the allow-list).
    http: Option<ureq::Agent>,
    /// Counters of capability use.
    pub counts: CapCounts,
}

/// Counters of capability use by one plugin.
#[derive(Default)]
pub(crate) struct CapCounts {
    /// HTTP requests made.
    pub http_requests: AtomicU64,
    /// Capability calls refused (not granted, host or topic not allowed, over a limit).
    pub denied: AtomicU64,
    /// Messages published.
    pub published: AtomicU64,
}

impl PluginCaps {
    /// The capabilities of `config`, with its key-value store from `stores`.
    pub fn new(config: &PluginConfig, stores: &KvStores) -> Result<PluginCaps, String> {
        let grants = config.capabilities.clone();
        let kv = match &grants.kv {
            Some(g) => Some(stores.get(&config.name, g.max_bytes.0)?),
            None => None,
        };
        let http = grants.http.as_ref().map(|_| {
            ureq::AgentBuilder::new()
                .redirects(0)
                .user_agent(concat!("mqtt-broker-plugin/", env!("CARGO_PKG_VERSION")))
                .build()
        });
        Ok(PluginCaps {
            plugin: Arc::from(config.name.as_str()),
            grants,
            kv,
            http,
            counts: CapCounts::default(),
        })
    }

    fn denied(&self, what: &str) -> String {
        self.counts.denied.fetch_add(1, Ordering::Relaxed);
        format!(
            "capability `{what}` is not granted to plugin {}: add `capabilities: {{{what}: ...}}` to its entry in the broker config",
            self.plugin
        )
    }

    /// The key-value store, or the error for a plugin without the grant.
    pub fn kv(&self) -> Result<&KvStore, String> {
        self.kv.as_deref().ok_or_else(|| self.denied("kv"))
    }

    /// Checks a message the plugin wants to publish against the grant.
    pub fn check_publish(&self, topic: &str) -> Result<(), String> {
        let Some(grant) = &self.grants.publish else {
            return Err(self.denied("publish"));
        };
        if !grant
            .topics
            .iter()
            .any(|f| crate::protocol::topic::filter_matches(f, topic))
        {
            self.counts.denied.fetch_add(1, Ordering::Relaxed);
            return Err(format!(
                "plugin {} may not publish to {topic:?}: capabilities.publish.topics allows {:?}",
                self.plugin, grant.topics
            ));
        }
        Ok(())
    }

    /// Most messages one hook call may publish.
    pub fn publish_per_call(&self) -> usize {
        self.grants.publish.as_ref().map_or(0, |g| g.max_per_call)
    }

    /// Performs an HTTP request for the plugin, finishing by `deadline` at the latest.
    pub fn fetch(
        &self,
        req: HttpRequest,
        deadline: Option<Instant>,
    ) -> Result<HttpResponse, String> {
        let (Some(grant), Some(agent)) = (&self.grants.http, &self.http) else {
            return Err(self.denied("http"));
        };
        let url =
            url::Url::parse(&req.url).map_err(|e| format!("invalid URL {:?}: {e}", req.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            self.counts.denied.fetch_add(1, Ordering::Relaxed);
            return Err(format!(
                "URL scheme {:?} is not http or https",
                url.scheme()
            ));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => format!("[{a}]"),
            Some(h) => h.to_string().to_ascii_lowercase(),
            None => return Err(format!("URL {:?} has no host", req.url)),
        };
        let port = url.port_or_known_default().unwrap_or(80);
        if !grant.allows(&host, port) {
            self.counts.denied.fetch_add(1, Ordering::Relaxed);
            return Err(format!(
                "host {host}:{port} is not in capabilities.http.allow of plugin {} ({:?})",
                self.plugin, grant.allow
            ));
        }
        let timeout = request_timeout(grant, req.timeout_ms, deadline)?;
        let method = req.method.to_ascii_uppercase();
        if !matches!(
            method.as_str(),
            "GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "PATCH"
        ) {
            return Err(format!("HTTP method {method:?} is not supported"));
        }
        let mut r = agent.request_url(&method, &url).timeout(timeout);
        for (k, v) in &req.headers {
            r = r.set(k, v);
        }
        self.counts.http_requests.fetch_add(1, Ordering::Relaxed);
        let result = if req.body.is_empty() && matches!(method.as_str(), "GET" | "HEAD" | "DELETE")
        {
            r.call()
        } else {
            r.send_bytes(&req.body)
        };
        let response = match result {
            Ok(resp) => resp,
            // A 4xx/5xx is an answer for the plugin to judge, not a failure.
            Err(ureq::Error::Status(_, resp)) => resp,
            Err(ureq::Error::Transport(t)) => {
                return Err(format!("HTTP request to {host}:{port} failed: {t}"))
            }
        };
        let status = response.status();
        let headers = response
            .headers_names()
            .into_iter()
            .filter_map(|n| {
                let v = response.header(&n)?.to_owned();
                Some((n, v))
            })
            .collect();
        let mut body = Vec::new();
        response
            .into_reader()
            .take(grant.max_response_bytes.0)
            .read_to_end(&mut body)
            .map_err(|e| format!("reading the response from {host}:{port} failed: {e}"))?;
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// The time a request may take: the least of its own limit, the grant's and the hook's.
fn request_timeout(
    grant: &HttpGrant,
    asked_ms: Option<u32>,
    deadline: Option<Instant>,
) -> Result<Duration, String> {
    let mut t = grant.timeout.get();
    if let Some(ms) = asked_ms {
        t = t.min(Duration::from_millis(u64::from(ms.max(1))));
    }
    if let Some(d) = deadline {
        let left = d.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) {
            return Err(
                "the hook's time limit is reached; no time left for an HTTP request".into(),
            );
        }
        t = t.min(left);
    }
    Ok(t)
}

/// An HTTP request as the plugin asked for it.
pub(crate) struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: Option<u32>,
}

/// An HTTP response for the plugin.
pub(crate) struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The key-value stores of a broker's plugins, by plugin name; a reloaded plugin gets its
/// store back (capability `kv`).
#[derive(Default)]
pub struct KvStores {
    dir: Mutex<Option<PathBuf>>,
    stores: Mutex<HashMap<String, Weak<KvStore>>>,
}

impl std::fmt::Debug for KvStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStores")
            .field("dir", &*self.dir.lock())
            .finish()
    }
}

impl KvStores {
    /// Stores written under `dir` (`None`: kept in memory only).
    pub fn new(dir: Option<PathBuf>) -> Self {
        KvStores {
            dir: Mutex::new(dir),
            stores: Mutex::new(HashMap::new()),
        }
    }

    /// Where stores are written (`None`: kept in memory only). Applies to stores opened
    /// from now on.
    pub fn set_dir(&self, dir: Option<PathBuf>) {
        *self.dir.lock() = dir;
    }

    /// The store of plugin `name`, opened (and read from disk) if no loaded plugin has it.
    pub(crate) fn get(&self, name: &str, max_bytes: u64) -> Result<Arc<KvStore>, String> {
        let mut stores = self.stores.lock();
        stores.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = stores.get(name).and_then(Weak::upgrade) {
            s.max_bytes.store(max_bytes, Ordering::Relaxed);
            return Ok(s);
        }
        let file = self
            .dir
            .lock()
            .as_ref()
            .map(|d| d.join(format!("{}.json", file_stem(name))));
        let store = Arc::new(KvStore::open(name, file, max_bytes)?);
        if store.file.is_some() {
            spawn_flusher(&store);
        }
        stores.insert(name.to_owned(), Arc::downgrade(&store));
        Ok(store)
    }
}

/// A file name for a plugin name (which may hold any character).
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One plugin's key-value store.
pub(crate) struct KvStore {
    map: Mutex<BTreeMap<String, Vec<u8>>>,
    bytes: AtomicU64,
    max_bytes: AtomicU64,
    file: Option<PathBuf>,
    dirty: AtomicBool,
}

impl KvStore {
    fn open(name: &str, file: Option<PathBuf>, max_bytes: u64) -> Result<KvStore, String> {
        let mut map = BTreeMap::new();
        if let Some(f) = &file {
            match std::fs::read(f) {
                Ok(bytes) => {
                    let stored: BTreeMap<String, String> =
                        serde_json::from_slice(&bytes).map_err(|e| {
                            format!(
                                "plugin {name}: key-value store {} is corrupt: {e}",
                                f.display()
                            )
                        })?;
                    use base64::Engine as _;
                    for (k, v) in stored {
                        let v = base64::engine::general_purpose::STANDARD
                            .decode(v)
                            .map_err(|e| {
                                format!("plugin {name}: key-value store {}: {e}", f.display())
                            })?;
                        map.insert(k, v);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("plugin {name}: cannot read {}: {e}", f.display())),
            }
        }
        let bytes = map.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        Ok(KvStore {
            map: Mutex::new(map),
            bytes: AtomicU64::new(bytes),
            max_bytes: AtomicU64::new(max_bytes),
            file,
            dirty: AtomicBool::new(false),
        })
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.map.lock().get(key).cloned()
    }

    /// Stores `value` under `key`, within the size limit.
    pub fn set(&self, key: String, value: Vec<u8>) -> Result<(), String> {
        if key.len() > KV_MAX_KEY {
            return Err(format!(
                "key of {} bytes is longer than {KV_MAX_KEY}",
                key.len()
            ));
        }
        let mut map = self.map.lock();
        let old = map.get(&key).map_or(0, |v| (key.len() + v.len()) as u64);
        let new = (key.len() + value.len()) as u64;
        let total = self.bytes.load(Ordering::Relaxed) - old + new;
        let max = self.max_bytes.load(Ordering::Relaxed);
        if total > max {
            return Err(format!(
                "the key-value store would hold {total} bytes, over capabilities.kv.max_bytes ({max})"
            ));
        }
        map.insert(key, value);
        self.bytes.store(total, Ordering::Relaxed);
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Removes `key`; whether it was there.
    pub fn delete(&self, key: &str) -> bool {
        let mut map = self.map.lock();
        match map.remove(key) {
            Some(v) => {
                self.bytes
                    .fetch_sub((key.len() + v.len()) as u64, Ordering::Relaxed);
                self.dirty.store(true, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Keys starting with `prefix`, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.map
            .lock()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Bytes held (keys plus values).
    pub fn size(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Writes the store to its file if it changed.
    fn flush(&self) {
        let Some(file) = &self.file else { return };
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        use base64::Engine as _;
        let snapshot: BTreeMap<String, String> = self
            .map
            .lock()
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    base64::engine::general_purpose::STANDARD.encode(v),
                )
            })
            .collect();
        let result = serde_json::to_vec(&snapshot)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_atomically(file, &bytes));
        if let Err(e) = result {
            self.dirty.store(true, Ordering::Release);
            warn!(file = %file.display(), "cannot write a plugin's key-value store: {e}");
        }
    }
}

impl Drop for KvStore {
    fn drop(&mut self) {
        self.flush();
    }
}

fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, file)
}

/// Writes the store behind, until it is dropped (it flushes itself then).
fn spawn_flusher(store: &Arc<KvStore>) {
    let weak = Arc::downgrade(store);
    let spawned = std::thread::Builder::new()
        .name("plugin-kv".into())
        .spawn(move || loop {
            std::thread::sleep(KV_FLUSH_INTERVAL);
            match weak.upgrade() {
                Some(s) => s.flush(),
                None => break,
            }
        });
    if let Err(e) = spawned {
        warn!("cannot start the plugin key-value writer thread ({e}); changes are written when the plugin unloads");
    }
}

/// Messages a plugin published during one call, routed after it.
pub(crate) type PublishQueue = Vec<Message>;

/// Where plugin-published messages go (the broker's router); set when the plugin set is
/// installed.
pub type Publisher = Arc<dyn Fn(Message) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;
    use crate::plugins::ByteSize;

    #[test]
    fn kv_store_enforces_its_size_and_lists_by_prefix() {
        let s = KvStore::open("t", None, 20).unwrap();
        s.set("a/1".into(), b"xx".to_vec()).unwrap();
        s.set("a/2".into(), b"yy".to_vec()).unwrap();
        s.set("b".into(), b"z".to_vec()).unwrap();
        assert_eq!(s.keys("a/"), vec!["a/1", "a/2"]);
        assert_eq!(s.size(), 12);
        let err = s.set("c".into(), vec![0; 10]).unwrap_err();
        assert!(err.contains("max_bytes"), "{err}");
        // Replacing a value counts only the difference.
        s.set("a/1".into(), b"xxxx".to_vec()).unwrap();
        assert_eq!(s.size(), 14);
        assert!(s.delete("a/1"));
        assert!(!s.delete("a/1"));
        assert_eq!(s.get("a/2"), Some(b"yy".to_vec()));
    }

    #[test]
    fn kv_store_survives_a_reopen_from_its_file() {
        let dir = std::env::temp_dir().join(format!("kvtest-{}", std::process::id()));
        let stores = KvStores::default();
        stores.set_dir(Some(dir.clone()));
        {
            let s = stores.get("p 1", 1 << 20).unwrap();
            s.set("k".into(), vec![0, 255, 7]).unwrap();
        }
        // Dropped: flushed. A new registry (a restarted broker) reads it back.
        let again = KvStores::default();
        again.set_dir(Some(dir.clone()));
        let s = again.get("p 1", 1 << 20).unwrap();
        assert_eq!(s.get("k"), Some(vec![0, 255, 7]));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn http_timeout_is_the_least_of_request_grant_and_hook() {
        let grant = HttpGrant {
            allow: vec!["x".into()],
            timeout: ConfigDuration::secs(5),
            max_response_bytes: ByteSize(10),
        };
        assert_eq!(
            request_timeout(&grant, None, None).unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(
            request_timeout(&grant, Some(100), None).unwrap(),
            Duration::from_millis(100)
        );
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(request_timeout(&grant, None, Some(soon)).unwrap() <= Duration::from_millis(50));
        let past = Instant::now() - Duration::from_millis(1);
        assert!(request_timeout(&grant, None, Some(past)).is_err());
    }

    #[test]
    fn http_allow_list_matches_host_and_port() {
        let grant = HttpGrant {
            allow: vec![
                "Auth.Example.com".into(),
                "127.0.0.1:8080".into(),
                "[::1]:9".into(),
            ],
            timeout: ConfigDuration::secs(5),
            max_response_bytes: ByteSize(10),
        };
        assert!(grant.allows("auth.example.com", 443));
        assert!(grant.allows("127.0.0.1", 8080));
        assert!(!grant.allows("127.0.0.1", 8081));
        assert!(grant.allows("[::1]", 9));
        assert!(!grant.allows("evil.example.com", 443));
    }
}
