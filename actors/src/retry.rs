//! Retrying a transient failure: one loop for every retry in the runtime (a sink's write and
//! flush, reading a sink's stored progress before the start, a Kafka producer's full queue).
//! The caller says which errors are worth retrying and what to log; the backoff, the cap and
//! the deadline live here.
//!
//! Never retries an error the caller did not call transient, and never sleeps without a cap.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// One attempt: a future borrowing the state it works on.
pub type Attempt<'a, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'a>>;

/// How long to wait between attempts and when to give up.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// Wait after the first failure.
    pub first: Duration,
    /// The wait doubles after every failure up to this.
    pub cap: Duration,
    /// Give up (return the error) on a failure this long after the first attempt; `None`:
    /// retry for as long as the failures are transient.
    pub give_up_after: Option<Duration>,
}

impl Backoff {
    /// Exponential from `first`, doubling up to `cap`, without a deadline.
    pub const fn exponential(first: Duration, cap: Duration) -> Backoff {
        Backoff { first, cap, give_up_after: None }
    }

    /// The same wait every time, without a deadline.
    pub const fn fixed(every: Duration) -> Backoff {
        Backoff { first: every, cap: every, give_up_after: None }
    }

    /// Gives up on a failure `after` the first attempt.
    pub const fn give_up_after(mut self, after: Duration) -> Backoff {
        self.give_up_after = Some(after);
        self
    }
}

/// Runs `attempt` on `state` until it succeeds, a failure is not `transient`, or the deadline
/// has passed; returns the last result. Before every wait, `on_retry` is told the error and the
/// wait (to log and count it). The state is passed in (rather than captured) so that each
/// attempt's future may borrow it.
pub async fn retry<S: ?Sized, T, E>(
    backoff: Backoff,
    state: &mut S,
    mut attempt: impl for<'a> FnMut(&'a mut S) -> Attempt<'a, T, E>,
    transient: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(&E, Duration),
) -> Result<T, E> {
    let started = Instant::now();
    let mut wait = backoff.first;
    loop {
        match attempt(state).await {
            Err(e) if transient(&e) && backoff.give_up_after.is_none_or(|d| started.elapsed() < d) => {
                on_retry(&e, wait);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(backoff.cap);
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_transient_failures_with_a_capped_backoff_and_stops_on_a_permanent_one() {
        let mut calls = 0;
        let mut waits = Vec::new();
        let res: Result<(), &str> = retry(
            Backoff::exponential(Duration::from_millis(1), Duration::from_millis(3)),
            &mut calls,
            |calls| {
                *calls += 1;
                let e = if *calls < 5 { "transient" } else { "permanent" };
                Box::pin(async move { Err(e) })
            },
            |e| *e == "transient",
            |_, w| waits.push(w),
        )
        .await;
        assert_eq!(res, Err("permanent"));
        assert_eq!(calls, 5);
        assert_eq!(waits, [1, 2, 3, 3].map(Duration::from_millis));
    }

    #[tokio::test]
    async fn a_failure_past_the_deadline_is_returned() {
        let mut calls = 0u32;
        let res: Result<(), u32> = retry(
            Backoff::fixed(Duration::from_millis(1)).give_up_after(Duration::ZERO),
            &mut calls,
            |calls| {
                *calls += 1;
                let e = *calls;
                Box::pin(async move { Err(e) })
            },
            |_| true,
            |_, _| {},
        )
        .await;
        assert_eq!(res, Err(1));
    }
}
