//! Atmosphere's transports.
//!
//! [`ble`] holds the Bluetooth LE transport: [`ble::BleTransport`] implements
//! libp2p's `Transport` over any [`ble::BleLink`] (a trait that hides the
//! radio). Backends: [`ble::sim`], an in-process simulated radio for tests
//! and simulations, and `ble::bluez` (cargo feature `bluez`, Linux), the
//! kernel's Bluetooth stack through BlueZ (see `docs/ble.md`).

pub mod ble;
