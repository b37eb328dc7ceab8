//! Vigie's public-transport service (in progress).
//!
//! - [`network`]: a GTFS feed loaded into the model the rules need (routes, stops, trips with
//!   their stop times, shapes, service days), with errors that name the file and the line.
//! - [`geometry`]: positions projected onto a trip's shape (distance along it, offset from it).
//! - [`rules`]: schedule adherence, headway classification (bunching, gaps), off route, silent
//!   vehicles. Pure, table-tested.

pub mod geometry;
pub mod network;
pub mod rules;
pub mod tracking;
