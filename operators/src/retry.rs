//! Exponential backoff for what talks to something that may be away for a while (an MLflow
//! server, a webhook, a source's broker): each wait twice the one before, up to a bound, and
//! back to the first after a success.

use std::time::Duration;

/// The waits between tries.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    most: Duration,
    next: Duration,
}

impl Backoff {
    /// Waits of `first`, doubling, at most `most`.
    pub fn new(first: Duration, most: Duration) -> Backoff {
        Backoff {
            first,
            most,
            next: first,
        }
    }

    /// A server's: 0.5 s, doubling, at most 30 s.
    pub fn server() -> Backoff {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
    }

    /// The wait before the next try (and doubles the one after).
    pub fn wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.most);
        wait
    }

    /// After a success: the next wait is the first again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_bound_and_start_over_after_a_success() {
        let mut b = Backoff::server();
        let waits: Vec<u64> = (0..9).map(|_| b.wait().as_millis() as u64).collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.wait(), Duration::from_millis(500));
        let mut short = Backoff::new(Duration::from_millis(100), Duration::from_millis(250));
        let waits: Vec<u64> = (0..3).map(|_| short.wait().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 250]);
    }
}
