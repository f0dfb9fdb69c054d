//! Waiting for the next event: every request (a long poll of the feed) or
//! webhook delivery of this instance that waits for it waits on one reader
//! of the feed's head, so waiting costs the database the same whether one
//! waits or a thousand, and nothing while none does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::ports::events::EventLog;

/// The position of the latest event, as this instance last read it.
pub struct FeedHead(Arc<Shared>);

struct Shared {
    latest: watch::Sender<u64>,
    /// Whether a task is reading the head for the waiting requests.
    following: AtomicBool,
    every: Duration,
}

impl Shared {
    fn saw(&self, head: u64) {
        self.latest.send_if_modified(|latest| {
            let moved = head > *latest;
            *latest = (*latest).max(head);
            moved
        });
    }
}

impl FeedHead {
    /// A head read every `every` while a request waits.
    pub fn new(every: Duration) -> Self {
        Self(Arc::new(Shared {
            latest: watch::Sender::new(0),
            following: AtomicBool::new(false),
            every,
        }))
    }

    /// The latest position known.
    pub fn latest(&self) -> u64 {
        *self.0.latest.borrow()
    }

    /// Makes known a head read elsewhere.
    pub fn saw(&self, head: u64) {
        self.0.saw(head);
    }

    /// Waits until the latest event is past `position`, or until `until`;
    /// the latest position known then.
    pub async fn wait_past<L: EventLog>(&self, log: &Arc<L>, position: u64, until: Instant) -> u64 {
        let mut latest = self.0.latest.subscribe();
        if !self.0.following.swap(true, Ordering::AcqRel) {
            tokio::spawn(follow(self.0.clone(), log.clone()));
        }
        let _ = tokio::time::timeout_at(until, latest.wait_for(|&head| head > position)).await;
        *latest.borrow()
    }
}

/// Reads the head every `every` while any request waits, then stops (a
/// request that comes as it stops finds it stopped and starts another).
async fn follow<L: EventLog>(shared: Arc<Shared>, log: Arc<L>) {
    loop {
        while shared.latest.receiver_count() > 0 {
            match log.head().await {
                Ok(head) => shared.saw(head),
                Err(error) => tracing::warn!(%error, "cannot read the event feed's head"),
            }
            tokio::time::sleep(shared.every).await;
        }
        shared.following.store(false, Ordering::Release);
        if shared.latest.receiver_count() == 0 || shared.following.swap(true, Ordering::AcqRel) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::domain::events::{Event, EventType};
    use crate::services::StoreError;

    #[derive(Default)]
    struct Head {
        position: AtomicU64,
        reads: AtomicU64,
    }

    impl EventLog for Head {
        async fn read(&self, _: u64, _: &[EventType], _: u32) -> Result<Vec<Event>, StoreError> {
            Ok(Vec::new())
        }

        async fn head(&self) -> Result<u64, StoreError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            Ok(self.position.load(Ordering::Relaxed))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_thousand_waiting_requests_read_the_head_as_often_as_one() {
        let (feed, log) = (
            Arc::new(FeedHead::new(Duration::from_millis(100))),
            Arc::<Head>::default(),
        );
        let until = Instant::now() + Duration::from_secs(30);
        let waiters: Vec<_> = (0..1000)
            .map(|_| {
                let (feed, log) = (feed.clone(), log.clone());
                tokio::spawn(async move { feed.wait_past(&log, 0, until).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1050)).await;
        log.position.store(7, Ordering::Relaxed);
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), 7);
        }
        // About one read per 100 ms for all of them, not one per request.
        let reads = log.reads.load(Ordering::Relaxed);
        assert!((10..=13).contains(&reads), "{reads} reads of the head");
        // With no one waiting, nothing is read; the next request starts again.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(log.reads.load(Ordering::Relaxed) <= reads + 1);
        let soon = Instant::now() + Duration::from_millis(250);
        assert_eq!(feed.wait_past(&log, 7, soon).await, 7);
        assert!(
            Instant::now() >= soon,
            "no event past 7: waited until the deadline"
        );
    }
}
