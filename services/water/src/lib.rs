//! Vigie's water service (issue 6, in progress): the network and its district metered areas.
//!
//! - [`network`]: an EPANET `.inp` network (junctions, reservoirs, tanks, pipes, pumps, valves,
//!   coordinates), with errors that name the section and the line.
//! - [`placement`]: the network's local coordinates placed over the territory (WGS84), and each
//!   node's commune.
//! - [`dma`]: district metered areas derived from the network: the parts left connected once the
//!   metered inflow links and the boundary valves are cut, each with its inflows.
//!
//! - [`quality`]: readings' measures, units and ranges, and sensor flags (out of range, frozen,
//!   silent).
//!
//! - [`leaks`]: leak detection by minimum night flow against a per-weekday baseline, scored on the
//!   BattLeDIM leak schedule.
//!
//! - [`rules`]: tank levels, French drinking-water references, bursts (pressure drop with inflow
//!   rise), with hysteresis.
//!
//! Still to come: the readings stream, valve
//! commands, the service binary, and the simulator's part.

pub mod dma;
pub mod leaks;
pub mod network;
pub mod placement;
pub mod quality;
pub mod rules;
