//! Queue depth and age for the metrics page, read from Postgres by a
//! background refresh (every few seconds, bounded by a timeout) so a scrape
//! never waits on the database: a slow or absent database makes the queue
//! figures stale and `sandgnat_queue_stats_up` 0, nothing else.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::config::Settings;
use crate::queue;

const EVERY: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Default)]
pub struct QueueMetrics(Arc<Mutex<String>>);

impl QueueMetrics {
    pub fn text(&self) -> String {
        self.0.lock().clone()
    }

    /// Refreshes forever; spawn it on the metrics listener's event loop.
    pub async fn refresh(self, settings: Settings) {
        let db = match crate::store::lazy_pool(&settings) {
            Ok(db) => db,
            Err(e) => {
                tracing::warn!(error = %e, "queue metrics disabled: bad database settings");
                *self.0.lock() = render(None);
                return;
            }
        };
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            let stats = match tokio::time::timeout(TIMEOUT, queue::stats(&db)).await {
                Ok(Ok(stats)) => Some(stats),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "queue stats unavailable");
                    None
                }
                Err(_) => None,
            };
            *self.0.lock() = render(stats.as_deref());
        }
    }
}

/// Every state of every product queue appears, zero included, so that
/// alerts on `sandgnat_queue_jobs` see a series before the first job.
pub fn render(stats: Option<&[queue::QueueStats]>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP sandgnat_queue_stats_up Whether the last queue stats refresh reached the database.\n\
         # TYPE sandgnat_queue_stats_up gauge\nsandgnat_queue_stats_up {}",
        u8::from(stats.is_some())
    );
    let Some(stats) = stats else {
        return out;
    };
    let _ = writeln!(
        out,
        "# HELP sandgnat_queue_jobs Jobs by queue and state.\n# TYPE sandgnat_queue_jobs gauge"
    );
    let states = [
        "available",
        "scheduled",
        "running",
        "retryable",
        "completed",
        "discarded",
        "cancelled",
    ];
    let mut queues: Vec<&str> = crate::bridge::QUEUES.to_vec();
    for s in stats {
        if !queues.contains(&s.queue.as_str()) {
            queues.push(&s.queue);
        }
    }
    for q in &queues {
        for state in states {
            let n: i64 = stats
                .iter()
                .filter(|s| s.queue == *q && s.state == state)
                .map(|s| s.jobs)
                .sum();
            let _ = writeln!(
                out,
                "sandgnat_queue_jobs{{queue=\"{}\",state=\"{state}\"}} {n}",
                escape(q)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP sandgnat_queue_oldest_available_seconds Age of the oldest claimable job.\n\
         # TYPE sandgnat_queue_oldest_available_seconds gauge"
    );
    for q in &queues {
        let oldest = stats
            .iter()
            .filter(|s| s.queue == *q)
            .filter_map(|s| s.oldest_available_seconds)
            .fold(0.0f64, f64::max);
        let _ = writeln!(
            out,
            "sandgnat_queue_oldest_available_seconds{{queue=\"{}\"}} {oldest:.3}",
            escape(q)
        );
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_product_queue_and_state_is_a_series() {
        let stats = vec![queue::QueueStats {
            queue: "analysis".into(),
            state: "available".into(),
            jobs: 3,
            oldest_available_seconds: Some(12.5),
        }];
        let text = render(Some(&stats));
        assert!(text.contains("sandgnat_queue_stats_up 1"));
        assert!(text.contains("sandgnat_queue_jobs{queue=\"analysis\",state=\"available\"} 3"));
        assert!(text.contains("sandgnat_queue_jobs{queue=\"notify\",state=\"running\"} 0"));
        assert!(text.contains("sandgnat_queue_oldest_available_seconds{queue=\"analysis\"} 12.500"));
        assert!(render(None).contains("sandgnat_queue_stats_up 0"));
    }
}
