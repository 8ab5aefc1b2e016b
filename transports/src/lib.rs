//! Atmosphere's transports.
//!
//! [`ble`] holds the Bluetooth LE transport: [`ble::BleTransport`] implements
//! libp2p's `Transport` over any [`ble::BleLink`] (a trait that hides the
//! radio). The only backend so far is [`ble::sim`], an in-process simulated
//! radio used by tests and simulations; the BlueZ backend is not built yet
//! (see `docs/ble.md`).

pub mod ble;
