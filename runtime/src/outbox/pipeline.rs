//! The relay's bookkeeping between database round trips, without any I/O (see [`Pipeline`]).

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::relay::RelaySettings;
use crate::backoff::Backoff;

/// The longest an acknowledged row waits for its `DELETE` when nothing else is read: at low load
/// a delete of its own per message would cost a statement and a commit each.
pub(super) const DELETE_DELAY: Duration = Duration::from_millis(100);

/// What became of one row handed to the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Delivered {
    pub(super) id: i64,
    pub(super) created_at: DateTime<Utc>,
    /// The broker acknowledged it.
    pub(super) ok: bool,
}

/// The relay's bookkeeping between database round trips, without any I/O: which rows are with
/// the producer and not yet deleted, which were acknowledged and wait for their `DELETE`, whether
/// committed rows may be waiting, and the pause after a failed delivery. [`super::Relay::run`] drives
/// it in a loop and [`super::Relay::relay_once`] for one batch; the unit tests below drive it directly.
#[derive(Debug)]
pub(super) struct Pipeline {
    batch: i64,
    max_in_flight: usize,
    /// Rows handed to the producer and not yet deleted (acknowledged or not).
    unfinished: HashSet<i64>,
    /// Acknowledged rows waiting for their `DELETE`.
    acked: Vec<i64>,
    /// When the oldest of them was acknowledged.
    acked_since: Option<Instant>,
    /// Committed rows may be waiting (notified, polled, or the last read was full).
    more: bool,
    /// After a failed delivery, no reading until then (later rows of a lane must not overtake it
    /// by much, and a broker that refuses should not be hammered).
    paused_until: Option<Instant>,
    backoff: Backoff,
    /// Topics published to: checked when acknowledgements stop coming.
    topics: BTreeSet<String>,
}

/// What [`Pipeline::settle`] made of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settled {
    Acknowledged,
    /// The row will be read and sent again once the pause is over.
    Failed {
        retry_in: Duration,
    },
}

impl Pipeline {
    pub(super) fn new(settings: &RelaySettings) -> Self {
        Self {
            batch: settings.batch_size.max(1),
            max_in_flight: settings.max_in_flight.max(1),
            unfinished: HashSet::new(),
            acked: Vec::new(),
            acked_since: None,
            more: true,
            paused_until: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            topics: BTreeSet::new(),
        }
    }

    pub(super) fn paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|t| now < t)
    }

    /// Rows may be waiting and no pause is running.
    pub(super) fn wants_read(&self, now: Instant) -> bool {
        self.more && !self.paused(now)
    }

    /// Every committed row of the held lanes was read or handed over (the last read was
    /// complete and nothing asked for another since), and no pause runs: rows handed over may go
    /// out without a read.
    pub(super) fn caught_up(&self, now: Instant) -> bool {
        !self.more && !self.paused(now)
    }

    /// How many rows to read now, if the relay should read at all: rows may be waiting, no pause
    /// is running, and fewer than `max_in_flight` rows are with the producer.
    pub(super) fn read_limit(&self, now: Instant) -> Option<i64> {
        let room = self.room();
        (self.wants_read(now) && room > 0).then(|| self.batch.min(room as i64))
    }

    /// `rows` were read (asking for `limit`) and handed to the producer.
    pub(super) fn sent<'a, I>(&mut self, rows: I, limit: i64)
    where
        I: IntoIterator<Item = (i64, &'a str)>,
        I::IntoIter: ExactSizeIterator,
    {
        let rows = rows.into_iter();
        self.more = rows.len() as i64 == limit;
        for (id, topic) in rows {
            self.unfinished.insert(id);
            if !self.topics.contains(topic) {
                self.topics.insert(topic.to_owned());
            }
        }
    }

    /// Places left for rows handed to the producer.
    pub(super) fn room(&self) -> usize {
        self.max_in_flight.saturating_sub(self.unfinished.len())
    }

    /// `rows` were handed over by their writer and given to the producer without a read.
    pub(super) fn handed<'a>(&mut self, rows: impl IntoIterator<Item = (i64, &'a str)>) {
        for (id, topic) in rows {
            self.unfinished.insert(id);
            if !self.topics.contains(topic) {
                self.topics.insert(topic.to_owned());
            }
        }
    }

    /// Rows handed to the producer and not yet deleted: a read skips them.
    pub(super) fn unfinished(&self) -> &HashSet<i64> {
        &self.unfinished
    }

    /// Topics published to.
    pub(super) fn topics(&self) -> &BTreeSet<String> {
        &self.topics
    }

    /// Books a delivery's outcome: an acknowledged row waits for its delete; a failed one is
    /// forgotten (so it is read again) after a pause that doubles with each failure in a row.
    pub(super) fn settle(&mut self, d: Delivered, now: Instant) -> Settled {
        if d.ok {
            self.acked.push(d.id);
            self.acked_since.get_or_insert(now);
            self.backoff.reset();
            Settled::Acknowledged
        } else {
            self.unfinished.remove(&d.id);
            let retry_in = self.backoff.next_wait();
            self.paused_until = Some(now + retry_in);
            self.more = true;
            Settled::Failed { retry_in }
        }
    }

    /// Every acknowledged row, to delete now.
    pub(super) fn take_acked(&mut self) -> Vec<i64> {
        self.acked_since = None;
        std::mem::take(&mut self.acked)
    }

    /// The acknowledged rows to delete now, already booked as finished (if the delete fails, the
    /// session is lost and [`Pipeline::reset`] forgets everything anyway). Deletes wait, so that
    /// one statement deletes many rows: until a read is due anyway (the delete rides on it), a
    /// batch has gathered, or the oldest has waited [`DELETE_DELAY`].
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<i64> {
        let due = self.wants_read(now)
            || self.acked.len() as i64 >= self.batch
            || self.acked_since.is_some_and(|t| now >= t + DELETE_DELAY);
        if !due {
            return Vec::new();
        }
        let done = self.take_acked();
        self.deleted(&done);
        done
    }

    /// `ids` were deleted: they are finished.
    pub(super) fn deleted(&mut self, ids: &[i64]) {
        for id in ids {
            self.unfinished.remove(id);
        }
    }

    /// Notified or polled: committed rows may be waiting.
    pub(super) fn wake(&mut self) {
        self.more = true;
    }

    /// The database session (and with it the lanes) was lost: whoever holds a lane next reads its
    /// rows again, so forget what was in flight here (a duplicate at worst).
    pub(super) fn reset(&mut self) {
        self.unfinished.clear();
        self.acked.clear();
        self.acked_since = None;
        self.more = true;
    }

    /// How long to wait for an acknowledgement or a notification before looking anyway (or
    /// deleting what was acknowledged).
    pub(super) fn wait(&self, poll: Duration, now: Instant) -> Duration {
        [self.paused_until, self.acked_since.map(|t| t + DELETE_DELAY)]
            .into_iter()
            .flatten()
            .fold(poll, |wait, t| wait.min(t.saturating_duration_since(now)))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::outbox) fn delivered(id: i64, ok: bool) -> Delivered {
        Delivered {
            id,
            created_at: Utc::now(),
            ok,
        }
    }

    fn pipeline(batch: i64, max_in_flight: usize) -> Pipeline {
        Pipeline::new(&RelaySettings {
            batch_size: batch,
            max_in_flight,
            ..RelaySettings::default()
        })
    }

    #[test]
    fn the_pipeline_reads_while_rows_may_wait_and_room_is_left() {
        let now = Instant::now();
        let mut p = pipeline(3, 5);
        assert_eq!(p.read_limit(now), Some(3), "at first, a full batch");
        p.sent([(1, "a"), (2, "a"), (3, "b")], 3);
        assert_eq!(
            p.read_limit(now),
            Some(2),
            "a full read: more may wait, 2 places left"
        );
        p.sent([(4, "a")], 2);
        assert_eq!(
            p.read_limit(now),
            None,
            "a short read: nothing waits until notified"
        );
        p.wake();
        assert_eq!(p.read_limit(now), Some(1));
        assert_eq!(
            p.topics.iter().map(String::as_str).collect::<Vec<_>>(),
            ["a", "b"]
        );
        p.sent([(5, "a")], 1);
        assert_eq!(
            p.read_limit(now),
            None,
            "max_in_flight rows are with the producer"
        );
    }

    #[test]
    fn acknowledged_rows_wait_for_their_delete_and_then_free_their_place() {
        let now = Instant::now();
        let mut p = pipeline(10, 2);
        p.sent([(1, "a"), (2, "a")], 2);
        assert_eq!(p.settle(delivered(2, true), now), Settled::Acknowledged);
        assert_eq!(
            p.read_limit(now),
            None,
            "acknowledged but not deleted: still in flight"
        );
        let done = p.take_acked();
        assert_eq!(done, [2]);
        assert!(p.take_acked().is_empty());
        p.deleted(&done);
        assert_eq!(p.read_limit(now), Some(1));
        assert!(p.unfinished.contains(&1) && !p.unfinished.contains(&2));
    }

    #[test]
    fn acknowledged_rows_are_deleted_with_the_next_read_a_full_batch_or_after_a_delay() {
        let now = Instant::now();
        let mut p = pipeline(3, 10);
        p.sent([(1, "a"), (2, "a")], 3);
        assert_eq!(p.take_due(now), Vec::<i64>::new(), "nothing acknowledged yet");
        p.settle(delivered(1, true), now);
        assert!(p.take_due(now).is_empty(), "one row, no read due: it waits");
        assert_eq!(
            p.wait(Duration::from_secs(1), now),
            DELETE_DELAY,
            "but not longer than the delay"
        );
        assert_eq!(p.take_due(now + DELETE_DELAY), [1], "the delay is over");
        assert!(!p.unfinished.contains(&1) && p.unfinished.contains(&2));
        assert_eq!(p.wait(Duration::from_secs(1), now), Duration::from_secs(1));

        p.settle(delivered(2, true), now);
        p.wake();
        assert_eq!(p.take_due(now), [2], "a read is due: the delete rides on it");

        let mut p = pipeline(2, 10);
        p.sent([(3, "a"), (4, "a")], 3);
        p.settle(delivered(3, true), now);
        p.settle(delivered(4, true), now);
        assert_eq!(p.take_due(now), [3, 4], "a batch gathered");
        assert!(
            p.take_due(now + DELETE_DELAY).is_empty(),
            "and the delay starts over"
        );
    }

    #[test]
    fn acknowledged_rows_holding_every_place_are_deleted_to_make_room_for_a_read() {
        let now = Instant::now();
        let mut p = pipeline(10, 2);
        p.sent([(1, "a"), (2, "a")], 2);
        p.settle(delivered(1, true), now);
        p.settle(delivered(2, true), now);
        p.wake();
        assert_eq!(p.read_limit(now), None, "no room while they wait");
        assert_eq!(p.take_due(now), [1, 2]);
        assert_eq!(p.read_limit(now), Some(2), "room again");
    }

    #[test]
    fn a_failed_delivery_is_read_again_after_a_pause_that_grows_until_a_success() {
        let now = Instant::now();
        let mut p = pipeline(10, 10);
        p.sent([(1, "a"), (2, "a"), (3, "a")], 10);
        let first = p.settle(delivered(1, false), now);
        assert_eq!(
            first,
            Settled::Failed {
                retry_in: Duration::from_millis(100)
            }
        );
        assert!(
            !p.unfinished.contains(&1),
            "forgotten, so the next read returns it"
        );
        assert_eq!(p.read_limit(now), None, "paused");
        assert_eq!(p.wait(Duration::from_secs(1), now), Duration::from_millis(100));
        assert!(
            p.read_limit(now + Duration::from_millis(100)).is_some(),
            "read again after the pause"
        );
        assert_eq!(
            p.settle(delivered(2, false), now),
            Settled::Failed {
                retry_in: Duration::from_millis(200)
            },
            "failures in a row pause longer"
        );
        assert_eq!(p.settle(delivered(3, true), now), Settled::Acknowledged);
        p.sent([(4, "a")], 10);
        assert_eq!(
            p.settle(delivered(4, false), now),
            Settled::Failed {
                retry_in: Duration::from_millis(100)
            },
            "a success starts the pauses over"
        );
    }

    #[test]
    fn rows_go_out_without_a_read_only_while_caught_up() {
        let now = Instant::now();
        let mut p = pipeline(10, 10);
        assert!(!p.caught_up(now), "nothing read yet");
        p.sent([(1, "a")], 10);
        assert!(p.caught_up(now), "a complete read");
        p.handed([(2, "a")]);
        assert!(
            p.caught_up(now) && p.unfinished.contains(&2),
            "a hand-over asks for no read"
        );
        assert_eq!(p.room(), 8);
        p.wake();
        assert!(!p.caught_up(now), "notified of rows not handed over: read first");
        p.sent(std::iter::empty(), 10);
        p.settle(delivered(1, false), now);
        assert!(!p.caught_up(now), "a failed row is read again first");
        let later = now + Duration::from_millis(100);
        assert!(
            !p.caught_up(later) && p.wants_read(later),
            "even after the pause: it reads"
        );
        p.sent([(1, "a")], 10);
        assert!(p.caught_up(later));
    }

    #[test]
    fn a_lost_session_forgets_what_was_in_flight() {
        let now = Instant::now();
        let mut p = pipeline(2, 2);
        p.sent([(1, "a"), (2, "a")], 2);
        p.settle(delivered(1, true), now);
        p.reset();
        assert!(p.unfinished.is_empty() && p.take_acked().is_empty());
        assert_eq!(p.read_limit(now), Some(2));
    }
}
