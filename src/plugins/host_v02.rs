//! Host functions of plugin API 0.2: the `client` and `message` resources (read from the
//! call's context, so a call lowers only two handles), `host`, and the capability
//! interfaces `http`, `kv` and `publish`, each checked against the plugin's grants.

use super::bindings::truncate;
use super::bindings_v02::{self as b, wit, ClientHandle, MessageHandle};
use super::capabilities::HttpRequest;
use super::host::StoreState;
use std::sync::atomic::Ordering;
use wasmtime::component::Resource;

/// The handle every call passes for its client and message: the call's context says which.
pub(crate) const CALL_HANDLE: u32 = 0;

/// Longest plugin log message kept; the rest is cut (plugins are untrusted in size).
const MAX_LOG_BYTES: usize = 2048;

impl StoreState {
    fn client(&self) -> Option<&crate::hooks::ClientInfo> {
        self.call.client()
    }

    fn message(&self) -> Option<&crate::model::Message> {
        self.call.message()
    }
}

impl wit::HostClient for StoreState {
    fn client_id(&mut self, _: Resource<ClientHandle>) -> String {
        self.client()
            .map_or_else(String::new, |c| c.client_id.to_string())
    }

    fn username(&mut self, _: Resource<ClientHandle>) -> Option<String> {
        self.client().and_then(|c| c.username.clone())
    }

    fn peer_address(&mut self, _: Resource<ClientHandle>) -> String {
        self.client()
            .map_or_else(String::new, |c| c.peer.to_string())
    }

    fn transport(&mut self, _: Resource<ClientHandle>) -> wit::Transport {
        self.client()
            .map_or(wit::Transport::Tcp, |c| b::transport(c.transport))
    }

    fn tls_identity(&mut self, _: Resource<ClientHandle>) -> Option<String> {
        self.client().and_then(|c| c.tls_identity.clone())
    }

    fn protocol_level(&mut self, _: Resource<ClientHandle>) -> wit::ProtocolLevel {
        self.client().map_or(wit::ProtocolLevel::Mqtt311, |c| {
            b::protocol_level(c.protocol)
        })
    }

    fn clean_start(&mut self, _: Resource<ClientHandle>) -> bool {
        self.client().is_some_and(|c| c.clean_session)
    }

    fn drop(&mut self, _: Resource<ClientHandle>) -> wasmtime::Result<()> {
        // Borrowed handles only: nothing was allocated for them.
        Ok(())
    }
}

impl wit::HostMessage for StoreState {
    fn topic(&mut self, _: Resource<MessageHandle>) -> String {
        self.message()
            .map_or_else(String::new, |m| m.topic.to_string())
    }

    fn payload(&mut self, _: Resource<MessageHandle>) -> Vec<u8> {
        self.message().map_or_else(Vec::new, |m| m.payload.to_vec())
    }

    fn payload_size(&mut self, _: Resource<MessageHandle>) -> u32 {
        self.message()
            .map_or(0, |m| u32::try_from(m.payload.len()).unwrap_or(u32::MAX))
    }

    fn qos(&mut self, _: Resource<MessageHandle>) -> wit::Qos {
        self.message()
            .map_or(wit::Qos::AtMostOnce, |m| b::qos_to_wit(m.qos))
    }

    fn retain(&mut self, _: Resource<MessageHandle>) -> bool {
        self.message().is_some_and(|m| m.retain)
    }

    fn properties(&mut self, _: Resource<MessageHandle>) -> wit::MessageProperties {
        match self.message() {
            Some(m) => b::message_properties(m),
            None => b::message_properties(&crate::model::Message::new(
                "",
                bytes::Bytes::new(),
                crate::protocol::QoS::AtMostOnce,
                false,
            )),
        }
    }

    fn drop(&mut self, _: Resource<MessageHandle>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl wit::Host for StoreState {}

impl b::host::Host for StoreState {
    fn log(&mut self, level: b::host::LogLevel, message: String) {
        use b::host::LogLevel;
        let plugin = &*self.plugin;
        let client_id = self.client_id.as_deref().unwrap_or("");
        let message = truncate(&message, MAX_LOG_BYTES);
        match level {
            LogLevel::Trace => tracing::trace!(plugin, client_id, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, client_id, "{message}"),
            LogLevel::Info => tracing::info!(plugin, client_id, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, client_id, "{message}"),
            LogLevel::Error => tracing::error!(plugin, client_id, "{message}"),
        }
    }

    fn now_millis(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

impl b::http::Host for StoreState {
    fn fetch(&mut self, request: b::http::Request) -> Result<b::http::Response, String> {
        let req = HttpRequest {
            method: request.method,
            url: request.url,
            headers: request.headers,
            body: request.body,
            timeout_ms: request.timeout_ms,
        };
        let r = self.caps.fetch(req, self.call.deadline())?;
        Ok(b::http::Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        })
    }
}

impl b::kv::Host for StoreState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        Ok(self.caps.kv()?.get(&key))
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.caps.kv()?.set(key, value)
    }

    fn delete(&mut self, key: String) -> Result<bool, String> {
        Ok(self.caps.kv()?.delete(&key))
    }

    fn keys(&mut self, prefix: String) -> Result<Vec<String>, String> {
        Ok(self.caps.kv()?.keys(&prefix))
    }
}

impl b::publish::Host for StoreState {
    fn publish(&mut self, message: wit::OutgoingMessage) -> Result<(), String> {
        self.caps.check_publish(&message.topic)?;
        let limit = self.caps.publish_per_call();
        if self.published.len() >= limit {
            self.caps.counts.denied.fetch_add(1, Ordering::Relaxed);
            return Err(format!(
                "more than capabilities.publish.max_per_call ({limit}) messages in one call"
            ));
        }
        let msg = b::message_from_wit(message)?;
        self.published.push(msg);
        Ok(())
    }
}
