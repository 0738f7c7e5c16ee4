//! Host functions of plugin API 0.2: the `client` and `message` resources (read from the
//! call's context, so a call lowers only two handles), `host`, and the capability
//! interfaces `http`, `kv` and `publish`, each checked against the plugin's grants.

use super::bindings::truncate;
use super::bindings_v02::{self as b, wit, ClientHandle, MessageHandle};
use super::capabilities::HttpRequest;
use super::host::StoreState;
use super::plugin::MAX_ADDITIONAL_MESSAGES;
use crate::model::Message;
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

    // What the `client` resource's methods and the `current` interface's functions return:
    // the same answers, reached through a handle or without one.

    fn client_id_of_call(&self) -> String {
        self.client()
            .map_or_else(String::new, |c| c.client_id.to_string())
    }

    fn username_of_call(&self) -> Option<String> {
        self.client().and_then(|c| c.username.clone())
    }

    fn peer_address_of_call(&self) -> String {
        self.client()
            .map_or_else(String::new, |c| c.peer.to_string())
    }

    fn transport_of_call(&self) -> wit::Transport {
        self.client()
            .map_or(wit::Transport::Tcp, |c| b::transport(c.transport))
    }

    fn tls_identity_of_call(&self) -> Option<String> {
        self.client().and_then(|c| c.tls_identity.clone())
    }

    fn protocol_level_of_call(&self) -> wit::ProtocolLevel {
        self.client().map_or(wit::ProtocolLevel::Mqtt311, |c| {
            b::protocol_level(c.protocol)
        })
    }

    fn topic_of_call(&self) -> String {
        self.message()
            .map_or_else(String::new, |m| m.topic.to_string())
    }

    fn payload_of_call(&self) -> Vec<u8> {
        self.message().map_or_else(Vec::new, |m| m.payload.to_vec())
    }

    fn payload_size_of_call(&self) -> u32 {
        self.message()
            .map_or(0, |m| u32::try_from(m.payload.len()).unwrap_or(u32::MAX))
    }

    fn qos_of_call(&self) -> wit::Qos {
        self.message()
            .map_or(wit::Qos::AtMostOnce, |m| b::qos_to_wit(m.qos))
    }

    fn retain_of_call(&self) -> bool {
        self.message().is_some_and(|m| m.retain)
    }

    fn properties_of_call(&self) -> wit::MessageProperties {
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
}

impl wit::HostClient for StoreState {
    fn client_id(&mut self, _: Resource<ClientHandle>) -> String {
        self.client_id_of_call()
    }

    fn username(&mut self, _: Resource<ClientHandle>) -> Option<String> {
        self.username_of_call()
    }

    fn peer_address(&mut self, _: Resource<ClientHandle>) -> String {
        self.peer_address_of_call()
    }

    fn transport(&mut self, _: Resource<ClientHandle>) -> wit::Transport {
        self.transport_of_call()
    }

    fn tls_identity(&mut self, _: Resource<ClientHandle>) -> Option<String> {
        self.tls_identity_of_call()
    }

    fn protocol_level(&mut self, _: Resource<ClientHandle>) -> wit::ProtocolLevel {
        self.protocol_level_of_call()
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
        self.topic_of_call()
    }

    fn payload(&mut self, _: Resource<MessageHandle>) -> Vec<u8> {
        self.payload_of_call()
    }

    fn payload_size(&mut self, _: Resource<MessageHandle>) -> u32 {
        self.payload_size_of_call()
    }

    fn qos(&mut self, _: Resource<MessageHandle>) -> wit::Qos {
        self.qos_of_call()
    }

    fn retain(&mut self, _: Resource<MessageHandle>) -> bool {
        self.retain_of_call()
    }

    fn properties(&mut self, _: Resource<MessageHandle>) -> wit::MessageProperties {
        self.properties_of_call()
    }

    fn drop(&mut self, _: Resource<MessageHandle>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl b::current::Host for StoreState {
    fn client_id(&mut self) -> String {
        self.client_id_of_call()
    }

    fn username(&mut self) -> Option<String> {
        self.username_of_call()
    }

    fn peer_address(&mut self) -> String {
        self.peer_address_of_call()
    }

    fn client_transport(&mut self) -> wit::Transport {
        self.transport_of_call()
    }

    fn tls_identity(&mut self) -> Option<String> {
        self.tls_identity_of_call()
    }

    fn client_protocol_level(&mut self) -> wit::ProtocolLevel {
        self.protocol_level_of_call()
    }

    fn topic(&mut self) -> String {
        self.topic_of_call()
    }

    fn payload(&mut self) -> Vec<u8> {
        self.payload_of_call()
    }

    fn payload_size(&mut self) -> u32 {
        self.payload_size_of_call()
    }

    fn message_qos(&mut self) -> wit::Qos {
        self.qos_of_call()
    }

    fn retain(&mut self) -> bool {
        self.retain_of_call()
    }

    fn properties(&mut self) -> wit::MessageProperties {
        self.properties_of_call()
    }

    fn read_message(&mut self) -> wit::IncomingMessage {
        wit::IncomingMessage {
            topic: self.topic_of_call(),
            payload: self.payload_of_call(),
            qos: self.qos_of_call(),
            retain: self.retain_of_call(),
            received_millis: super::host::unix_millis(),
        }
    }

    // Shadowed by `link_current_outputs` (below), which lifts the message without copying
    // it out first; kept because the bindings' trait requires them, and equivalent.
    fn replace(&mut self, message: wit::OutgoingMessage) -> Result<(), String> {
        self.replace_output(b::message_from_wit(message))
    }

    fn add(&mut self, message: wit::OutgoingMessage) -> Result<(), String> {
        self.add_output(b::message_from_wit(message))
    }
}

impl StoreState {
    /// `current.replace` of `message` (or of what was wrong with it): the outside-a-call
    /// error comes first.
    fn replace_output(&mut self, message: Result<Message, String>) -> Result<(), String> {
        let Some(out) = self.call.output.as_mut() else {
            return Err(NOT_IN_FAST_TRANSFORM.into());
        };
        out.replacement = Some(message?);
        Ok(())
    }

    /// `current.add` of `message` (or of what was wrong with it): the outside-a-call and
    /// too-many errors come first.
    fn add_output(&mut self, message: Result<Message, String>) -> Result<(), String> {
        let Some(out) = self.call.output.as_mut() else {
            return Err(NOT_IN_FAST_TRANSFORM.into());
        };
        if out.additional.len() >= MAX_ADDITIONAL_MESSAGES {
            return Err(format!(
                "more than {MAX_ADDITIONAL_MESSAGES} additional messages in one call"
            ));
        }
        out.additional.push(message?);
        Ok(())
    }
}

/// The error `current.replace` and `current.add` give outside a `fast-transform` call.
const NOT_IN_FAST_TRANSFORM: &str =
    "current.replace and current.add work only during a fast-transform call";

/// `outgoing-message` as `current.add` and `current.replace` receive it, its topic and
/// payload left in the plugin's memory: the broker copies each once, straight into the
/// message it routes (the generated bindings copy them into a `String` and a `Vec` first).
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lift)]
#[component(record)]
struct OutgoingMessageInPlace {
    topic: wasmtime::component::WasmStr,
    payload: wasmtime::component::WasmList<u8>,
    qos: wit::Qos,
    retain: bool,
    properties: Option<wit::MessageProperties>,
}

impl OutgoingMessageInPlace {
    /// Copies the message out of the plugin's memory; `Err` names what is wrong with it.
    fn take(self, store: &wasmtime::StoreContextMut<'_, StoreState>) -> Result<Message, String> {
        let topic = self
            .topic
            .to_str(store)
            .map_err(|e| format!("plugin produced an unreadable topic: {e}"))?;
        let payload = bytes::Bytes::copy_from_slice(self.payload.as_le_slice(store));
        b::message_from_parts(&topic, payload, self.qos, self.retain, self.properties)
    }
}

/// Redefines `current.add` and `current.replace` (after the generated bindings defined
/// them) to lift their message in place; see `OutgoingMessageInPlace`.
pub(crate) fn link_current_outputs(
    linker: &mut wasmtime::component::Linker<StoreState>,
) -> wasmtime::Result<()> {
    type Output = fn(&mut StoreState, Result<Message, String>) -> Result<(), String>;
    let outputs: [(&str, Output); 2] = [
        ("add", StoreState::add_output),
        ("replace", StoreState::replace_output),
    ];
    linker.allow_shadowing(true);
    let mut current = linker.instance("mqtt-broker:plugin/current@0.2.0")?;
    for (name, output) in outputs {
        current.func_wrap(
            name,
            move |mut store: wasmtime::StoreContextMut<'_, StoreState>,
                  (m,): (OutgoingMessageInPlace,)|
                  -> wasmtime::Result<(Result<(), String>,)> {
                let message = m.take(&store);
                Ok((output(store.data_mut(), message),))
            },
        )?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

impl wit::Host for StoreState {}

impl b::host::Host for StoreState {
    fn log(&mut self, level: b::host::LogLevel, message: String) {
        use b::host::LogLevel;
        let plugin = &*self.plugin;
        let client_id = self.log_client_id();
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
        super::host::unix_millis()
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
