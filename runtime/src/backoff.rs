//! Exponential backoff for retrying loops (a batch the database refused, a dead letter the broker
//! did not take, a relay that lost its connection): doubles from `initial` up to `max`, back to
//! `initial` after a success.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The wait before the next attempt; the one after it doubles (up to the maximum).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// What [`Backoff::next_wait`] would return, without moving on.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// After a success: start again from the initial wait.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(50), ms(300));
        let waits: Vec<_> = (0..5).map(|_| b.next_wait()).collect();
        assert_eq!(waits, [ms(50), ms(100), ms(200), ms(300), ms(300)]);
        b.reset();
        assert_eq!(b.peek(), ms(50));
        assert_eq!(b.next_wait(), ms(50));
    }
}
