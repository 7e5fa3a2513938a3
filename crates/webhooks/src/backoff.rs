//! When to try a failed delivery again: exponential back-off from
//! [`FIRST`] doubling to at most [`LONGEST`], each delay drawn at random
//! between half and all of it (jitter, so endpoints that failed together
//! are not retried together), for at least [`GIVE_UP_AFTER`] after the
//! first failure.

use std::time::Duration;

/// The delay after the first failure (before jitter).
pub const FIRST: Duration = Duration::from_secs(5);
/// The longest delay between two attempts (before jitter).
pub const LONGEST: Duration = Duration::from_secs(3600);
/// How long an event is retried after its first failure.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(72 * 3600);

/// The delay before attempt `failures + 1`, after `failures` failures (1 or
/// more), with `unit` a random number in [0, 1) for the jitter.
pub fn delay(failures: u32, unit: f64) -> Duration {
    delay_from(FIRST, failures, unit)
}

/// [`delay`] with another first delay (a configuration for tests and
/// impatient deployments; the longest delay stays [`LONGEST`]).
pub fn delay_from(first: Duration, failures: u32, unit: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let full = first.saturating_mul(1u32 << exp).min(LONGEST);
    full.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// A random number in [0, 1) from the operating system.
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    // Without randomness the jitter is the midpoint: still a valid delay.
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether an event that first failed `since_first_failure` ago is still
/// retried.
pub fn keep_trying(since_first_failure: Duration) -> bool {
    since_first_failure < GIVE_UP_AFTER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_an_hour_with_jitter_and_cover_72_hours() {
        assert_eq!(delay(1, 0.999_999).as_secs(), 4); // just under 5 s
        assert_eq!(delay(1, 0.0), Duration::from_millis(2500));
        assert_eq!(delay(2, 0.0), Duration::from_secs(5));
        assert_eq!(delay(3, 0.0), Duration::from_secs(10));
        assert_eq!(delay(40, 0.0), LONGEST / 2);
        assert!(delay(40, 0.999) <= LONGEST);
        // Even with the shortest draws, the attempts that fit in 72 hours
        // keep coming at least every hour: about 80 of them.
        let mut t = Duration::ZERO;
        let mut n = 0;
        while keep_trying(t) {
            n += 1;
            t += delay(n, 0.0);
        }
        assert!((60..200).contains(&n), "{n} attempts in 72 h");
        let u = random_unit();
        assert!((0.0..1.0).contains(&u));
    }
}
