//! `tillup-loadgen`: a chain's release night against the real
//! `tillup-server` (see [`night`]), measured per endpoint ([`stats`]).
#![deny(missing_docs)]

pub mod head_office;
pub mod night;
pub mod stats;
pub mod versus_nginx;
