//! The bridge's sans-IO core: packets from this broker (the bridge's local session) and
//! from the remote broker in, packets to send to each side out.
//!
//! A QoS 1/2 message is acknowledged to the side it came from only once the other side
//! has acknowledged it (PUBACK, or PUBREC for QoS 2), so that whatever holds it — this
//! broker's persistent session, or the remote's session for the bridge — keeps it until
//! it is safe: store and forward without a store of its own. While the remote is down,
//! QoS 1/2 messages from this broker wait here unacknowledged (at most `max_inflight`;
//! behind them the broker queues in the bridge's session) and QoS 0 ones are dropped and
//! counted.

use super::rules::RuleSet;
use crate::protocol::codec::publish_packet_len;
use crate::protocol::{Ack, AckKind, ByteString, Packet, Properties, ProtocolLevel, Publish, QoS};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub use crate::model::{
    BRIDGE_NODE_PROPERTY as NODE_PROPERTY, BRIDGE_PATH_PROPERTY as PATH_PROPERTY,
};

/// Packet id of the bridge's SUBSCRIBE packets on both sides; never used for a message.
pub const CONTROL_PID: u16 = u16::MAX;

/// Why a message was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// QoS 0 while the remote was unreachable.
    Disconnected,
    /// It had already been on the broker it would go to (loop prevention).
    Loop,
    /// The receiving side refused it (reason code ≥ 0x80).
    Refused,
    /// No rule maps its topic.
    NoRule,
    /// Larger than the remote's Maximum Packet Size (it would close the link at every try).
    TooLarge,
}

impl DropReason {
    /// Label value in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Disconnected => "disconnected",
            DropReason::Loop => "loop",
            DropReason::Refused => "refused",
            DropReason::NoRule => "no_rule",
            DropReason::TooLarge => "too_large",
        }
    }
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send to this broker.
    ToLocal(Packet),
    /// Send to the remote.
    ToRemote(Packet),
    /// A message went out to the remote (count it).
    Forwarded,
    /// A message came in from the remote and was published here (count it).
    Received,
    /// A message was dropped.
    Dropped(DropReason),
}

/// Where an outbound QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    /// Not sent to the remote yet (it is down, or its window is full).
    Held,
    /// Sent with this packet id, not acknowledged.
    Sent(u16),
    /// QoS 2: the remote sent PUBREC, we sent PUBREL with this id; waiting for PUBCOMP.
    Released(u16),
}

#[derive(Debug)]
struct OutMsg {
    /// Packet id of this broker's PUBLISH, until acknowledged to it.
    local_pid: Option<u16>,
    publish: Publish,
    state: OutState,
}

/// A message from the remote being published here.
#[derive(Debug)]
struct InMsg {
    remote_pid: u16,
    qos: QoS,
    /// The remote link it came in on; its acknowledgement is moot on another one whose
    /// session was not resumed.
    link: u64,
}

/// Where a QoS 2 message from the remote stands, by its packet id [MQTT-4.3.3-2].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InQos2 {
    /// Being published here.
    Forwarding,
    /// PUBREC sent; waiting for PUBREL.
    Received,
}

/// See the module documentation.
pub struct Relay {
    rules: Arc<RuleSet>,
    remote_v5: bool,
    node: Arc<str>,
    /// The remote's node name, when it is one of ours and said so.
    remote_node: Option<Arc<str>>,
    remote_up: bool,
    /// Counts remote connections, to tell acknowledgements of an old link.
    link: u64,
    /// How many messages the remote takes unacknowledged.
    remote_window: usize,
    /// The largest packet the remote accepts (its MQTT 5 Maximum Packet Size).
    remote_max_packet: usize,
    out: BTreeMap<u64, OutMsg>,
    next_seq: u64,
    out_by_remote: HashMap<u16, u64>,
    out_by_local: HashMap<u16, u64>,
    next_remote_pid: u16,
    inbound: HashMap<u16, InMsg>,
    inbound_qos2: HashMap<u16, InQos2>,
    next_local_pid: u16,
    actions: Vec<Action>,
}

impl Relay {
    /// A relay for `rules`; `node` is this broker's name (loop prevention).
    pub fn new(rules: Arc<RuleSet>, remote_v5: bool, node: &str) -> Self {
        Relay {
            rules,
            remote_v5,
            node: node.into(),
            remote_node: None,
            remote_up: false,
            link: 0,
            remote_window: usize::from(u16::MAX),
            remote_max_packet: usize::MAX,
            out: BTreeMap::new(),
            next_seq: 0,
            out_by_remote: HashMap::new(),
            out_by_local: HashMap::new(),
            next_remote_pid: 0,
            inbound: HashMap::new(),
            inbound_qos2: HashMap::new(),
            next_local_pid: 0,
            actions: Vec::new(),
        }
    }

    /// The actions decided since the last call.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// QoS 1/2 messages from this broker not yet acknowledged by the remote.
    pub fn pending(&self) -> usize {
        self.out.len()
    }

    /// Whether the remote link is up.
    pub fn remote_up(&self) -> bool {
        self.remote_up
    }

    /// The remote accepted the connection. `window` is its receive maximum, `max_packet`
    /// its Maximum Packet Size; `remote_node` its node name when it is one of ours.
    pub fn remote_connected(
        &mut self,
        session_present: bool,
        window: u16,
        max_packet: Option<u32>,
        remote_node: Option<Arc<str>>,
    ) {
        self.remote_up = true;
        self.link += 1;
        self.remote_window = usize::from(window.max(1));
        self.remote_max_packet = max_packet.map_or(usize::MAX, |m| m as usize);
        self.remote_node = remote_node;
        if !session_present {
            // The remote forgot the bridge's session: its packet ids mean nothing now.
            self.inbound_qos2.clear();
            self.out_by_remote.clear();
            let mut done = Vec::new();
            for (seq, m) in self.out.iter_mut() {
                match m.state {
                    // Already owned by the remote (PUBREC), and acknowledged here.
                    OutState::Released(_) => done.push(*seq),
                    OutState::Sent(_) => m.state = OutState::Held,
                    OutState::Held => {}
                }
            }
            for seq in done {
                self.out.remove(&seq);
            }
        } else {
            // [MQTT-4.4.0-1]: resend what is unacknowledged, in the original order.
            let resend: Vec<(u16, bool, Publish)> = self
                .out
                .values()
                .filter_map(|m| match m.state {
                    OutState::Sent(pid) => Some((pid, false, m.publish.clone())),
                    OutState::Released(pid) => Some((pid, true, m.publish.clone())),
                    OutState::Held => None,
                })
                .collect();
            for (pid, released, mut p) in resend {
                if released {
                    self.actions.push(Action::ToRemote(Packet::PubRel(pid)));
                } else {
                    p.pid = Some(pid);
                    p.dup = true;
                    self.actions.push(Action::ToRemote(Packet::Publish(p)));
                }
            }
        }
        self.send_held();
    }

    /// The remote link is gone.
    pub fn remote_lost(&mut self) {
        self.remote_up = false;
    }

    /// A packet from this broker.
    pub fn from_local(&mut self, packet: Packet) {
        match packet {
            Packet::Publish(p) => self.local_publish(p),
            Packet::PubRel(pid) => {
                self.actions.push(Action::ToLocal(Packet::PubComp(pid)));
            }
            Packet::Ack(a) if a.kind == AckKind::PubRel => {
                self.actions.push(Action::ToLocal(Packet::PubComp(a.pid)));
            }
            other => {
                if let Some((kind, pid, reason)) = ack_of(&other) {
                    self.local_ack(kind, pid, reason);
                }
            }
        }
    }

    /// A packet from the remote.
    pub fn from_remote(&mut self, packet: Packet) {
        match packet {
            Packet::Publish(p) => self.remote_publish(p),
            Packet::PubRel(pid) => self.remote_pubrel(pid),
            Packet::Ack(a) if a.kind == AckKind::PubRel => self.remote_pubrel(a.pid),
            other => {
                if let Some((kind, pid, reason)) = ack_of(&other) {
                    self.remote_ack(kind, pid, reason);
                }
            }
        }
    }

    fn local_publish(&mut self, p: Publish) {
        let local_pid = p.pid;
        let ack_local = |relay: &mut Relay| {
            if let Some(pid) = local_pid {
                let ack = match p.qos {
                    QoS::ExactlyOnce => Packet::PubRec(pid),
                    _ => Packet::PubAck(pid),
                };
                relay.actions.push(Action::ToLocal(ack));
            }
        };
        if let Some(pid) = local_pid {
            if self.out_by_local.contains_key(&pid) {
                // A redelivery of what we hold: the remote will get it once.
                return;
            }
        }
        let Some(remote_topic) = self.rules.outbound(&p.topic) else {
            self.actions.push(Action::Dropped(DropReason::NoRule));
            ack_local(self);
            return;
        };
        let path = path_of(p.properties.as_deref());
        if path
            .iter()
            .any(|n| *n == &*self.node || self.remote_node.as_deref().is_some_and(|r| r == *n))
        {
            self.actions.push(Action::Dropped(DropReason::Loop));
            ack_local(self);
            return;
        }
        let mut out = Publish {
            dup: false,
            qos: p.qos,
            retain: p.retain,
            topic: remote_topic.into(),
            pid: None,
            payload: p.payload.clone(),
            properties: None,
        };
        if self.remote_v5 {
            out.properties = Some(Arc::new(forwarded_properties(
                p.properties.as_deref(),
                &self.node,
            )));
        }
        let level = if self.remote_v5 {
            ProtocolLevel::V5
        } else {
            ProtocolLevel::V311
        };
        if publish_packet_len(&out, level) > self.remote_max_packet {
            self.actions.push(Action::Dropped(DropReason::TooLarge));
            ack_local(self);
            return;
        }
        if p.qos == QoS::AtMostOnce {
            if self.remote_up {
                self.actions.push(Action::ToRemote(Packet::Publish(out)));
                self.actions.push(Action::Forwarded);
            } else {
                self.actions.push(Action::Dropped(DropReason::Disconnected));
            }
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(pid) = local_pid {
            self.out_by_local.insert(pid, seq);
        }
        self.out.insert(
            seq,
            OutMsg {
                local_pid,
                publish: out,
                state: OutState::Held,
            },
        );
        self.send_held();
    }

    /// Sends held messages while the remote is up and its window has room.
    fn send_held(&mut self) {
        if !self.remote_up {
            return;
        }
        let mut in_flight = self.out_by_remote.len();
        let held: Vec<u64> = self
            .out
            .iter()
            .filter(|(_, m)| m.state == OutState::Held)
            .map(|(s, _)| *s)
            .collect();
        for seq in held {
            if in_flight >= self.remote_window {
                break;
            }
            let Some(pid) = self.alloc_remote_pid() else {
                break;
            };
            let Some(m) = self.out.get_mut(&seq) else {
                continue;
            };
            m.state = OutState::Sent(pid);
            let mut p = m.publish.clone();
            p.pid = Some(pid);
            self.out_by_remote.insert(pid, seq);
            in_flight += 1;
            self.actions.push(Action::ToRemote(Packet::Publish(p)));
        }
    }

    fn alloc_remote_pid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next_remote_pid = next_pid(self.next_remote_pid);
            if !self.out_by_remote.contains_key(&self.next_remote_pid) {
                return Some(self.next_remote_pid);
            }
        }
        None
    }

    fn alloc_local_pid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next_local_pid = next_pid(self.next_local_pid);
            if !self.inbound.contains_key(&self.next_local_pid) {
                return Some(self.next_local_pid);
            }
        }
        None
    }

    fn remote_ack(&mut self, kind: AckKind, pid: u16, reason: u8) {
        let Some(&seq) = self.out_by_remote.get(&pid) else {
            return;
        };
        let refused = reason >= 0x80;
        match kind {
            AckKind::PubAck => {
                self.finish_out(seq, refused);
            }
            AckKind::PubRec if refused => {
                self.finish_out(seq, true);
            }
            AckKind::PubRec => {
                self.actions.push(Action::ToRemote(Packet::PubRel(pid)));
                let Some(m) = self.out.get_mut(&seq) else {
                    return;
                };
                if let OutState::Sent(_) = m.state {
                    m.state = OutState::Released(pid);
                    self.actions.push(Action::Forwarded);
                    if let Some(lp) = m.local_pid.take() {
                        self.out_by_local.remove(&lp);
                        self.actions.push(Action::ToLocal(Packet::PubRec(lp)));
                    }
                }
            }
            AckKind::PubComp => {
                self.out_by_remote.remove(&pid);
                self.out.remove(&seq);
                self.send_held();
            }
            AckKind::PubRel => {}
        }
    }

    /// The remote is done with an outbound message: acknowledge it here and free its id.
    fn finish_out(&mut self, seq: u64, refused: bool) {
        let Some(m) = self.out.remove(&seq) else {
            return;
        };
        if let OutState::Sent(pid) | OutState::Released(pid) = m.state {
            self.out_by_remote.remove(&pid);
        }
        self.actions.push(if refused {
            Action::Dropped(DropReason::Refused)
        } else {
            Action::Forwarded
        });
        if let Some(lp) = m.local_pid {
            self.out_by_local.remove(&lp);
            let ack = if m.publish.qos == QoS::ExactlyOnce {
                Packet::PubRec(lp)
            } else {
                Packet::PubAck(lp)
            };
            self.actions.push(Action::ToLocal(ack));
        }
        self.send_held();
    }

    /// Drops a message from the remote, acknowledging it (it is handled: not wanted here).
    fn drop_remote(&mut self, p: &Publish, reason: DropReason) {
        self.actions.push(Action::Dropped(reason));
        if let Some(pid) = p.pid {
            let ack = if p.qos == QoS::ExactlyOnce {
                self.inbound_qos2.insert(pid, InQos2::Received);
                Packet::PubRec(pid)
            } else {
                Packet::PubAck(pid)
            };
            self.actions.push(Action::ToRemote(ack));
        }
    }

    fn remote_publish(&mut self, p: Publish) {
        let Some(local_topic) = self.rules.inbound(&p.topic) else {
            self.drop_remote(&p, DropReason::NoRule);
            return;
        };
        if path_of(p.properties.as_deref()).contains(&&*self.node) {
            // It was here already: coming back through another bridge.
            self.drop_remote(&p, DropReason::Loop);
            return;
        }
        let remote_pid = p.pid;
        if let (QoS::ExactlyOnce, Some(pid)) = (p.qos, remote_pid) {
            match self.inbound_qos2.get(&pid) {
                // [MQTT-4.3.3-2]: published here once, whatever the remote resends.
                Some(InQos2::Forwarding) => return,
                Some(InQos2::Received) => {
                    self.actions.push(Action::ToRemote(Packet::PubRec(pid)));
                    return;
                }
                None => {}
            }
        }
        let mut local = Publish {
            dup: false,
            qos: p.qos,
            retain: p.retain,
            topic: local_topic.into(),
            pid: None,
            payload: p.payload,
            properties: None,
        };
        // Our own link to this broker speaks MQTT 5: properties pass through, and the
        // remote (when it is one of ours) joins the path.
        if let Some(remote) = self.remote_node.clone() {
            local.properties = Some(Arc::new(forwarded_properties(
                p.properties.as_deref(),
                &remote,
            )));
        } else if let Some(props) = p.properties {
            let mut props = (*props).clone();
            props.topic_alias = None;
            props.subscription_identifiers.clear();
            if !props.is_empty() {
                local.properties = Some(Arc::new(props));
            }
        }
        self.actions.push(Action::Received);
        let Some(remote_pid) = remote_pid.filter(|_| p.qos != QoS::AtMostOnce) else {
            self.actions.push(Action::ToLocal(Packet::Publish(local)));
            return;
        };
        let Some(local_pid) = self.alloc_local_pid() else {
            return;
        };
        local.pid = Some(local_pid);
        self.inbound.insert(
            local_pid,
            InMsg {
                remote_pid,
                qos: p.qos,
                link: self.link,
            },
        );
        if p.qos == QoS::ExactlyOnce {
            self.inbound_qos2.insert(remote_pid, InQos2::Forwarding);
        }
        self.actions.push(Action::ToLocal(Packet::Publish(local)));
    }

    fn local_ack(&mut self, kind: AckKind, pid: u16, reason: u8) {
        match kind {
            AckKind::PubAck | AckKind::PubRec => {
                let Some(m) = self.inbound.get(&pid) else {
                    return;
                };
                let (remote_pid, qos, link) = (m.remote_pid, m.qos, m.link);
                if reason >= 0x80 {
                    self.actions.push(Action::Dropped(DropReason::Refused));
                }
                if kind == AckKind::PubRec && reason < 0x80 {
                    // Keep the id until PUBCOMP: this broker still uses it.
                    self.actions.push(Action::ToLocal(Packet::PubRel(pid)));
                } else {
                    self.inbound.remove(&pid);
                }
                if qos == QoS::ExactlyOnce {
                    // Present only while the remote's session for it lives on.
                    if let Some(state) = self.inbound_qos2.get_mut(&remote_pid) {
                        *state = InQos2::Received;
                        if self.remote_up {
                            self.actions
                                .push(Action::ToRemote(Packet::PubRec(remote_pid)));
                        }
                    }
                } else if self.remote_up && link == self.link {
                    // On an older link the remote resends it, and that copy is acknowledged.
                    self.actions
                        .push(Action::ToRemote(Packet::PubAck(remote_pid)));
                }
            }
            AckKind::PubComp => {
                self.inbound.remove(&pid);
            }
            AckKind::PubRel => {}
        }
    }

    fn remote_pubrel(&mut self, pid: u16) {
        self.inbound_qos2.remove(&pid);
        self.actions.push(Action::ToRemote(Packet::PubComp(pid)));
    }
}

/// The packet id after `pid`: 1 to 65534, never [`CONTROL_PID`].
fn next_pid(pid: u16) -> u16 {
    if pid >= CONTROL_PID - 1 {
        1
    } else {
        pid + 1
    }
}

/// An acknowledgement's kind, packet id and reason code.
fn ack_of(p: &Packet) -> Option<(AckKind, u16, u8)> {
    Some(match p {
        Packet::PubAck(pid) => (AckKind::PubAck, *pid, 0),
        Packet::PubRec(pid) => (AckKind::PubRec, *pid, 0),
        Packet::PubComp(pid) => (AckKind::PubComp, *pid, 0),
        Packet::PubRel(pid) => (AckKind::PubRel, *pid, 0),
        Packet::Ack(Ack {
            kind, pid, reason, ..
        }) => (*kind, *pid, *reason),
        _ => return None,
    })
}

/// The brokers a message has been bridged through.
fn path_of(props: Option<&Properties>) -> Vec<&str> {
    let Some(props) = props else {
        return Vec::new();
    };
    props
        .user_properties
        .iter()
        .filter(|(k, _)| &**k == PATH_PROPERTY)
        .flat_map(|(_, v)| v.split(','))
        .collect()
}

/// The properties a message is forwarded with: its own (no alias, no subscription ids),
/// and this node added to the path.
fn forwarded_properties(props: Option<&Properties>, node: &str) -> Properties {
    let mut out = props.cloned().unwrap_or_default();
    out.topic_alias = None;
    out.subscription_identifiers.clear();
    let mut path: Vec<String> = Vec::new();
    out.user_properties.retain(|(k, v)| {
        if &**k == PATH_PROPERTY {
            path.push(v.to_string());
            false
        } else {
            true
        }
    });
    if !path.iter().any(|p| p.split(',').any(|n| n == node)) {
        path.push(node.to_owned());
    }
    out.user_properties.push((
        ByteString::from(PATH_PROPERTY),
        ByteString::from(path.join(",")),
    ));
    out
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
