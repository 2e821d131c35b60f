//! Per-caller rate limits on what grows the store: Sends (`--rate-limit-send`
//! per second) and new chats (`--rate-limit-new` per minute); and on what
//! costs the store reads (`--rate-limit-read` per second), so that one
//! caller cannot starve the others. Each caller
//! has a token bucket holding up to twice its rate (a burst), refilled
//! continuously; a call that finds it empty is refused with
//! `chat.RateLimited` and told when a token will be there.
//!
//! A caller is its verified identity when there is one, else its address
//! (an IPv6 address by its /64, which one host usually has whole). Limits
//! are per replica: a client spread over N replicas gets N times the rate.
//!
//! Memory stays bounded however many callers come and go: a bucket that has
//! refilled is the same as none, so such buckets are dropped whenever the
//! table has doubled since the last sweep.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{auth::Identity, error::Error};

/// What a caller is limited on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Send,
    New,
    Read,
}

/// Whom a call is counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Who {
    User(String),
    Addr(IpAddr),
    /// Neither an identity nor an address (not reached over a socket).
    Unknown,
}

impl Who {
    /// The verified identity if any, else the peer's address.
    pub fn of(identity: Option<&Identity>, addr: Option<IpAddr>) -> Who {
        match (identity, addr) {
            (Some(id), _) => Who::User(id.user.clone()),
            (None, Some(IpAddr::V6(v6))) if v6.to_ipv4_mapped().is_none() => {
                // One host usually owns a whole /64: count it as one.
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Who::Addr(IpAddr::V6(prefix.into()))
            }
            (None, Some(IpAddr::V6(v6))) => {
                Who::Addr(IpAddr::V4(v6.to_ipv4_mapped().expect("checked above")))
            }
            (None, Some(v4)) => Who::Addr(v4),
            (None, None) => Who::Unknown,
        }
    }
}

/// The three limits; any may be off.
pub struct RateLimits {
    send: Option<Limiter>,
    new: Option<Limiter>,
    read: Option<Limiter>,
}

impl RateLimits {
    /// `send_per_sec` Sends a second, `new_per_min` chats a minute,
    /// `read_per_sec` reads a second; 0 is off.
    pub fn new(send_per_sec: f64, new_per_min: f64, read_per_sec: f64) -> Self {
        RateLimits {
            send: (send_per_sec > 0.0).then(|| Limiter::new(send_per_sec, 2.0 * send_per_sec)),
            new: (new_per_min > 0.0).then(|| Limiter::new(new_per_min / 60.0, 2.0 * new_per_min)),
            read: (read_per_sec > 0.0).then(|| Limiter::new(read_per_sec, 2.0 * read_per_sec)),
        }
    }

    /// Takes a token for `action` from `who`'s bucket.
    ///
    /// # Errors
    /// `RateLimited`, with how long until a token is there, when the bucket is empty.
    pub fn admit(&self, action: Action, who: &Who) -> Result<(), Error> {
        let (limiter, what) = match action {
            Action::Send => (&self.send, "messages"),
            Action::New => (&self.new, "new chats"),
            Action::Read => (&self.read, "reads"),
        };
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter.take(who, Instant::now()).map_err(|retry_after| {
            Error::RateLimited(
                format!(
                    "too many {what} from this caller (at most {} a {}); retry in {} ms",
                    limiter.shown_rate(action),
                    if action == Action::New {
                        "minute"
                    } else {
                        "second"
                    },
                    retry_after.as_millis().max(1)
                ),
                retry_after,
            )
        })
    }
}

/// Token buckets of one limit.
struct Limiter {
    /// Tokens a second.
    rate: f64,
    /// Most tokens a bucket holds.
    burst: f64,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    by_caller: HashMap<Who, Bucket>,
    /// Full buckets are swept when the table reaches this size.
    sweep_at: usize,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

const MAX_WAIT: Duration = Duration::from_secs(86_400);

/// The table is never swept below this size (sweeping a small table buys nothing).
const SWEEP_MIN: usize = 1024;

impl Limiter {
    fn new(rate: f64, burst: f64) -> Self {
        Limiter {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(Buckets {
                by_caller: HashMap::new(),
                sweep_at: SWEEP_MIN,
            }),
        }
    }

    fn shown_rate(&self, action: Action) -> f64 {
        match action {
            Action::Send | Action::Read => self.rate,
            Action::New => self.rate * 60.0,
        }
    }

    /// The bucket as it is at `now`.
    fn refilled(&self, bucket: Bucket, now: Instant) -> Bucket {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        Bucket {
            tokens: (bucket.tokens + elapsed * self.rate).min(self.burst),
            at: now,
        }
    }

    /// Takes one token, or says how long until there is one.
    fn take(&self, who: &Who, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let full = Bucket {
            tokens: self.burst,
            at: now,
        };
        let bucket = match buckets.by_caller.get(who) {
            Some(b) => self.refilled(*b, now),
            None => full,
        };
        if bucket.tokens < 1.0 {
            buckets.by_caller.insert(who.clone(), bucket);
            // (A day at most: a rate of nearly nothing must not overflow.)
            let wait = Duration::try_from_secs_f64((1.0 - bucket.tokens) / self.rate)
                .unwrap_or(MAX_WAIT)
                .min(MAX_WAIT);
            return Err(wait);
        }
        buckets.by_caller.insert(
            who.clone(),
            Bucket {
                tokens: bucket.tokens - 1.0,
                ..bucket
            },
        );
        if buckets.by_caller.len() >= buckets.sweep_at {
            buckets
                .by_caller
                .retain(|_, b| self.refilled(*b, now).tokens < self.burst);
            buckets.sweep_at = (2 * buckets.by_caller.len()).max(SWEEP_MIN);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Who {
        Who::of(None, Some(s.parse().unwrap()))
    }

    #[test]
    fn a_caller_gets_a_burst_of_twice_the_rate_then_the_rate() {
        let limiter = Limiter::new(10.0, 20.0);
        let t0 = Instant::now();
        let who = addr("10.0.0.1");
        for _ in 0..20 {
            limiter.take(&who, t0).unwrap();
        }
        let wait = limiter.take(&who, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // A tenth of a second later, one more token.
        limiter.take(&who, t0 + Duration::from_millis(100)).unwrap();
        assert!(limiter.take(&who, t0 + Duration::from_millis(100)).is_err());
        // Another caller is not affected.
        limiter.take(&addr("10.0.0.2"), t0).unwrap();
    }

    #[test]
    fn ipv6_callers_are_counted_by_their_64_prefix_and_mapped_ipv4_as_ipv4() {
        assert_eq!(addr("2001:db8::1"), addr("2001:db8::ffff:2"));
        assert_ne!(addr("2001:db8::1"), addr("2001:db8:0:1::1"));
        assert_eq!(addr("::ffff:10.0.0.1"), addr("10.0.0.1"));
        let id = Identity {
            user: "alice".into(),
            service: false,
            expires_at: None,
        };
        assert_eq!(
            Who::of(Some(&id), Some("10.0.0.1".parse().unwrap())),
            Who::User("alice".into())
        );
    }

    #[test]
    fn refilled_buckets_are_swept_so_the_table_stays_bounded() {
        let limiter = Limiter::new(1.0, 2.0);
        let t0 = Instant::now();
        for i in 0..100_000u32 {
            let who = Who::Addr(IpAddr::V4(i.into()));
            // Each caller is full again 2 s after its call.
            limiter
                .take(&who, t0 + Duration::from_millis(u64::from(i)))
                .unwrap();
        }
        let left = limiter.buckets.lock().unwrap().by_caller.len();
        assert!(left < 5_000, "{left} buckets kept");
    }

    #[test]
    fn off_limits_admit_everything() {
        let limits = RateLimits::new(0.0, 0.0, 0.0);
        for _ in 0..1000 {
            limits.admit(Action::Send, &Who::Unknown).unwrap();
            limits.admit(Action::New, &Who::Unknown).unwrap();
        }
    }

    #[test]
    fn a_refusal_is_rate_limited_with_the_wait() {
        let limits = RateLimits::new(0.0, 1.0, 0.0);
        limits.admit(Action::New, &Who::Unknown).unwrap();
        limits.admit(Action::New, &Who::Unknown).unwrap();
        let e = limits.admit(Action::New, &Who::Unknown).unwrap_err();
        assert_eq!(e.id(), "chat.RateLimited");
        let Error::RateLimited(detail, wait) = e else {
            unreachable!()
        };
        assert!(wait > Duration::from_secs(59) && wait <= Duration::from_secs(60));
        assert!(detail.contains("at most 1 a minute"), "{detail}");
    }
}
