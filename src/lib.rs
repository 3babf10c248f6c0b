//! SandGNAT: a malware-sample intake appliance in one binary. A master
//! process owns the sockets and supervises isolated workers (gunicorn's
//! model, with its settings and signals); see `DESIGN.md` for the whole.

pub mod accesslog;
pub mod api_error;
pub mod cli;
pub mod config;
pub mod isolation;
pub mod logging;
pub mod master;
pub mod metrics;
pub mod queue;
pub mod scoreboard;
pub mod shutdown;
pub mod sockets;
pub mod systemd;
pub mod worker;
