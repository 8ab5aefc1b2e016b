//! Atmosphere's transports.
//!
//! The BLE transport (simulated radio and the BlueZ backend) lands with the BLE
//! issue; this crate reserves its place in the workspace.
