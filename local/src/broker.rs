//! The embedded MQTT broker (rumqttd).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use anyhow::{Context as _, bail};
use device_sim::BrokerUrl;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Largest payload the embedded broker forwards: above IoT Core's 128 KiB so that an
/// oversize payload reaches ingest and is quarantined with its reason instead of vanishing
/// at the broker.
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// Starts rumqttd on `127.0.0.1:port` (`0` picks a free port) in its own threads; it lives
/// until the process exits. Returns the URL clients connect to.
pub fn start_embedded(port: u16) -> anyhow::Result<BrokerUrl> {
    let port = if port == 0 { free_port()? } else { port };
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    // Fail here, with a clear message, rather than inside the broker's thread.
    TcpListener::bind(listen).with_context(|| {
        format!("port {port} on 127.0.0.1 is taken: pass --broker-port 0 to pick a free one")
    })?;
    let server = ServerSettings {
        name: "v4-local".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: MAX_PAYLOAD,
            max_inflight_count: 1000,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 20_010,
            max_outgoing_packet_count: 1000,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .context("starting the embedded broker thread")?;
    // Wait until the listener accepts connections.
    for _ in 0..200 {
        if std::net::TcpStream::connect(listen).is_ok() {
            return Ok(BrokerUrl::mqtt("127.0.0.1", port));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    bail!("the embedded broker did not start listening on {listen} within 2 s")
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}
