//! `presence`: who is online now, and when everyone else was last seen.
//!
//! A heartbeat travels through the crate like this:
//!
//! - [`api`] takes `POST /v1/users/{id}/ping` over HTTP and checks the id ([`user`]).
//! - [`heartbeat`] records it in Redis with one script call, stamped on Redis's clock:
//!   the presence key that expires when the user stops pinging, and the shadow key that
//!   remembers the last heartbeat for a while longer. [`heartbeat_queue`] gathers the
//!   heartbeats of concurrent requests into shared calls. [`keys`] names both keys and
//!   [`shadow`] encodes what the shadow key holds.
//! - [`status`] answers "is this user online, and when were they last seen?" from the
//!   shadow key and Redis's clock, falling back to the durable rows in SQLite
//!   ([`last_seen`]) once the shadow key is gone.
//! - The batch job walks the shadow keys ([`scan`]), compares what it saw with the online
//!   set of the previous run ([`diff`]), and commits last-seen rows, online periods and a
//!   run log in one SQLite transaction ([`snapshot`]), under a run lock ([`lock`]), on its
//!   own clock if asked ([`schedule`]).
//! - [`db`] opens the database and applies the numbered migrations from `sql/`;
//!   [`redis_conn`] opens Redis, one server or a cluster, whose primaries [`cluster`]
//!   walks one by one and [`slot_map`] reads in one pipeline each; [`config`] holds the
//!   options both binaries share.
//! - Operations: [`metrics`] counts requests and runs for Prometheus, [`textfile`] leaves a
//!   cron run's numbers for node_exporter, [`web`] adds CORS and a bounded shutdown to the
//!   API, [`logging`] writes text or JSON logs, [`backup`] copies the database while it is
//!   in use, and [`report`] draws the run history.

pub mod api;
pub mod backup;
pub mod cli;
pub mod cluster;
pub mod compact_id;
pub mod config;
pub mod db;
pub mod diff;
pub mod heartbeat;
pub mod heartbeat_queue;
pub mod keys;
pub mod last_seen;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod progress;
pub mod redis_conn;
pub mod report;
pub mod scan;
pub mod schedule;
pub mod shadow;
pub mod slot_map;
pub mod snapshot;
pub mod status;
pub mod textfile;
pub mod time;
pub mod user;
pub mod web;
