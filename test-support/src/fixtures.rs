//! The typical device message the benchmarks feed the handlers: one of 100 devices, four
//! metrics and a firmware version, ten milliseconds apart from 2025-11-25T13:45:00.123Z.

use telemetry::Telemetry;

/// The first message's event time: 2025-11-25T13:45:00.123Z.
pub const T0: i64 = 1_764_078_300_123;

/// The `i`th message: device `sensor-{i % 100}`, seq `10_000 + i`, event time `T0 + 10 i`,
/// temperature (varying with `i`), humidity, battery and rssi, firmware 1.4.2.
pub fn device_message(i: usize) -> Telemetry {
    Telemetry {
        device_id: format!("sensor-{:06}", i % 100),
        seq: 10_000 + i as u64,
        ts: T0 + i as i64 * 10,
        metrics: [
            ("temperature", 21.53 + i as f64 / 100.0),
            ("humidity", 40.1),
            ("battery", 3.712),
            ("rssi", -67.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        fw: Some("1.4.2".into()),
    }
}
