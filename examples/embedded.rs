//! Running the broker inside your own program: the Rust counterpart of the seed's
//! `new MQTTBroker(config); await broker.start()`.
//!
//! Run: `cargo run --example embedded` (listens on 127.0.0.1:1883; pass a port to change it),
//! then e.g. `mosquitto_pub -t sensors/a -m 25.5` and watch the stats printed every 5 s.

use mqtt_broker::config::{Config, ListenerConfig};
use mqtt_broker::Broker;
use std::net::SocketAddr;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args()
        .nth(1)
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(1883);
    let mut config = Config {
        listeners: vec![ListenerConfig::tcp(SocketAddr::from((
            [127, 0, 0, 1],
            port,
        )))],
        ..Config::default()
    };
    config.server.max_connections = 1000;
    config.persistence.retained_message_limit = 1000;

    let broker = Broker::start(config).await?;
    println!("MQTT broker listening on {}", broker.local_addr());

    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => println!("{}", serde_json::to_string(&broker.stats())?),
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    broker.shutdown().await;
    Ok(())
}
