//! SandGNAT: a malware-sample intake appliance in one binary. A master
//! process owns the sockets and supervises isolated workers (gunicorn's
//! model, with its settings and signals); see `DESIGN.md` for the whole.

pub mod accesslog;
pub mod analyses;
pub mod api_error;
pub mod auth;
pub mod bridge;
pub mod child;
pub mod cli;
pub mod client;
pub mod config;
pub mod confine;
pub mod duties;
pub mod export;
pub mod frontend;
pub mod fuzz;
pub mod handover;
pub mod intake;
pub mod isolation;
pub mod jobs;
pub mod logging;
pub mod master;
pub mod metrics;
pub mod queue;
pub mod recorder;
pub mod request_id;
pub mod retention;
pub mod runner;
pub mod scan;
pub mod scoreboard;
pub mod shutdown;
pub mod sockets;
pub mod status;
pub mod storage;
pub mod store;
pub mod systemd;
pub mod worker;
