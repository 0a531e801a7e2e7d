//! `presence-snapshot schedule`: the job on its own clock.
//!
//! tokio-cron-scheduler fires the ticks (six fields, seconds first, in UTC) but does not
//! stop a slow run from overlapping the next tick, so each tick first tries a mutex held
//! for the length of a run: a tick that finds it taken is skipped and logged. On SIGINT or
//! SIGTERM the scheduler stops firing and the run in progress, if any, finishes before
//! the process exits.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Mutex;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::redis_conn::RedisConn;
use crate::snapshot::{SnapshotOptions, run_once};

/// Every five minutes on the wall clock, at second 0.
pub const DEFAULT_CRON: &str = "0 */5 * * * *";

/// Runs snapshots on `cron` until a shutdown signal.
pub async fn run_schedule(
    cron: &str,
    redis: RedisConn,
    opts: SnapshotOptions,
) -> anyhow::Result<()> {
    let running = Arc::new(Mutex::new(()));
    let mut scheduler = JobScheduler::new()
        .await
        .context("starting the scheduler")?;
    let job = tick_job(cron, Arc::clone(&running), redis, opts)?;
    scheduler
        .add(job)
        .await
        .context("adding the snapshot job")?;
    scheduler.start().await.context("starting the scheduler")?;
    tracing::info!(cron, "snapshot scheduler started");

    shutdown_signal().await;
    tracing::info!("shutting down; letting the current run finish");
    scheduler
        .shutdown()
        .await
        .context("stopping the scheduler")?;
    let _finished = running.lock().await;
    tracing::info!("snapshot scheduler stopped");
    Ok(())
}

fn tick_job(
    cron: &str,
    running: Arc<Mutex<()>>,
    redis: RedisConn,
    opts: SnapshotOptions,
) -> anyhow::Result<Job> {
    Job::new_async(cron, move |_id, _scheduler| {
        let (running, mut redis, opts) = (Arc::clone(&running), redis.clone(), opts.clone());
        Box::pin(async move {
            let Ok(_guard) = running.try_lock() else {
                tracing::warn!("skipping a tick: the previous run is still going");
                return;
            };
            let started = std::time::Instant::now();
            let outcome = run_once(&mut redis, &opts).await;
            crate::metrics::record_run(outcome.as_ref().ok(), started.elapsed());
            match outcome {
                Ok(summary) => tracing::info!(
                    online = summary.online,
                    came_online = summary.came_online,
                    went_offline = summary.went_offline,
                    keys_scanned = summary.keys_scanned,
                    rows_written = summary.rows_written,
                    vanished_kept = summary.vanished_kept,
                    elapsed_ms = summary.elapsed_ms,
                    "snapshot run"
                ),
                Err(e) => tracing::error!(
                    error = format!("{:#}", anyhow::Error::from(e)),
                    "snapshot run failed"
                ),
            }
        })
    })
    .with_context(|| format!("invalid cron expression {cron:?} (six fields, seconds first)"))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
