//! Login attempts: how many passwords are checked at once, how fast one client may guess, and the
//! record of failures an administrator reads.
//!
//! A password check (argon2id) takes about 19 MiB and tens of milliseconds: at most
//! [`MAX_CONCURRENT_CHECKS`] run at once, so a flood of logins costs a bounded amount of memory
//! and waits (or is told to retry) instead. Failed attempts slow their author down, never lock
//! the account: each (login, client address) pair waits longer after each failure (up to five
//! minutes), so does an address guessing many logins, and a login failing from many addresses
//! waits at most [`MAX_LOGIN_DELAY`] between attempts, so a guesser elsewhere delays the real
//! owner by seconds, never locks them out. The client address is the TCP peer's, or behind a
//! trusted reverse proxy the one it forwards (`access::client_address`, `--trusted-proxies`).

use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Password checks running at once (each takes about 19 MiB).
pub const MAX_CONCURRENT_CHECKS: usize = 4;
/// How long a login waits for a check to be free before it is told to retry.
pub const CHECK_WAIT: Duration = Duration::from_secs(2);
/// Failures of one (login, address) pair before its attempts are spaced out.
const FREE_FAILURES: u32 = 3;
/// The longest wait imposed on one (login, address) pair.
const MAX_PAIR_DELAY: Duration = Duration::from_secs(300);
/// Failures of one login (all addresses) before its attempts are spaced out.
const FREE_LOGIN_FAILURES: u32 = 10;
/// The longest wait imposed on a login across addresses: the owner's worst case.
pub const MAX_LOGIN_DELAY: Duration = Duration::from_secs(2);
/// Failed attempts an administrator can read (the latest).
const RECENT_KEPT: usize = 500;
/// Entries tracked at most (a flood of made-up logins or addresses cannot grow them forever).
const MAX_TRACKED: usize = 10_000;
/// A record with no failure for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(900);

#[derive(Debug, Clone, Copy)]
struct Attempts {
    failures: u32,
    last: Instant,
    next_allowed: Instant,
}

/// A failed login, as an administrator reads it.
#[derive(Debug, Clone, Serialize)]
pub struct FailedLogin {
    pub login: String,
    pub address: String,
    /// RFC 3339.
    pub at: String,
    /// `wrong_password`, or `throttled` (refused before any check).
    pub outcome: &'static str,
    /// Attempts this entry stands for: a client refused in a loop is one entry, counted, not a
    /// flood that pushes the wrong passwords out of the record.
    pub count: u32,
}

pub struct LoginThrottle {
    checks: std::sync::Arc<tokio::sync::Semaphore>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    by_pair: HashMap<(String, IpAddr), Attempts>,
    by_login: HashMap<String, Attempts>,
    /// Whatever the logins tried: one address guessing a new login each time is slowed too.
    by_address: HashMap<IpAddr, Attempts>,
    recent: VecDeque<FailedLogin>,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        LoginThrottle {
            checks: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_CHECKS)),
            state: Mutex::default(),
        }
    }
}

/// Failures of one address (any login) before its attempts are spaced out.
const FREE_ADDRESS_FAILURES: u32 = 20;

fn delay(failures: u32, free: u32, step: Duration, max: Duration) -> Duration {
    if failures < free {
        return Duration::ZERO;
    }
    let doublings = (failures - free).min(16);
    step.saturating_mul(1 << doublings).min(max)
}

impl LoginThrottle {
    /// Waits for a password check to be free (at most [`CHECK_WAIT`]); `None`: too many at once.
    /// The slot is owned: move it into the check, so that it is freed when the check ends, not
    /// when a caller who hung up stops waiting for it.
    pub async fn check_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        tokio::time::timeout(CHECK_WAIT, self.checks.clone().acquire_owned()).await.ok()?.ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `login` may be tried from `address` now; else how long to wait.
    pub fn may_try(&self, login: &str, address: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut state = self.lock();
        let pair = state.by_pair.get(&(login.to_owned(), address)).map(|a| a.next_allowed);
        let whole = state.by_login.get(login).map(|a| a.next_allowed);
        let from_here = state.by_address.get(&address).map(|a| a.next_allowed);
        let until = pair.into_iter().chain(whole).chain(from_here).max().filter(|t| *t > now);
        match until {
            None => Ok(()),
            Some(t) => {
                record(&mut state, login, address, "throttled");
                Err(t - now)
            }
        }
    }

    /// A wrong password (or an unknown login) from `address`.
    pub fn failed(&self, login: &str, address: IpAddr) {
        let now = Instant::now();
        let mut state = self.lock();
        if state.by_pair.len() > MAX_TRACKED
            || state.by_login.len() > MAX_TRACKED
            || state.by_address.len() > MAX_TRACKED
        {
            state.by_pair.retain(|_, a| now.duration_since(a.last) < FORGET_AFTER);
            state.by_login.retain(|_, a| now.duration_since(a.last) < FORGET_AFTER);
            state.by_address.retain(|_, a| now.duration_since(a.last) < FORGET_AFTER);
        }
        let login: String = login.chars().take(64).collect();
        let bump = |a: &mut Attempts, free: u32, step: Duration, max: Duration| {
            if now.duration_since(a.last) > FORGET_AFTER {
                a.failures = 0;
            }
            a.failures += 1;
            a.last = now;
            a.next_allowed = now + delay(a.failures, free, step, max);
        };
        let fresh = Attempts { failures: 0, last: now, next_allowed: now };
        let pair = state.by_pair.entry((login.clone(), address)).or_insert(fresh);
        bump(pair, FREE_FAILURES, Duration::from_secs(1), MAX_PAIR_DELAY);
        let whole = state.by_login.entry(login.clone()).or_insert(fresh);
        bump(whole, FREE_LOGIN_FAILURES, Duration::from_millis(250), MAX_LOGIN_DELAY);
        let from_here = state.by_address.entry(address).or_insert(fresh);
        bump(from_here, FREE_ADDRESS_FAILURES, Duration::from_secs(1), MAX_PAIR_DELAY);
        record(&mut state, &login, address, "wrong_password");
    }

    /// The right password from `address`: that pair starts afresh.
    pub fn succeeded(&self, login: &str, address: IpAddr) {
        self.lock().by_pair.remove(&(login.to_owned(), address));
    }

    /// The latest failed attempts, newest first.
    pub fn recent_failures(&self) -> Vec<FailedLogin> {
        self.lock().recent.iter().rev().cloned().collect()
    }
}

/// Recent entries searched for one to count a repeated refusal in.
const MERGE_WITHIN: usize = 32;

fn record(state: &mut State, login: &str, address: IpAddr, outcome: &'static str) {
    let login: String = login.chars().take(64).collect();
    let address_text = address.to_string();
    let at =
        chrono::DateTime::<chrono::Utc>::from(SystemTime::now()).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if outcome == "throttled"
        && let Some(same) = state
            .recent
            .iter_mut()
            .rev()
            .take(MERGE_WITHIN)
            .find(|f| f.outcome == outcome && f.login == login && f.address == address_text)
    {
        same.count = same.count.saturating_add(1);
        same.at = at;
        return;
    }
    if state.recent.len() >= RECENT_KEPT {
        state.recent.pop_front();
    }
    state.recent.push_back(FailedLogin { login, address: address_text, at, outcome, count: 1 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guesser_is_slowed_and_the_owner_elsewhere_is_not_locked_out() {
        let throttle = LoginThrottle::default();
        let guesser: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let owner: IpAddr = "192.0.2.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        for _ in 0..FREE_FAILURES {
            assert!(throttle.may_try("admin", guesser).is_ok());
            throttle.failed("admin", guesser);
        }
        assert!(throttle.may_try("admin", guesser).is_err(), "the guesser waits");
        assert!(throttle.may_try("admin", owner).is_ok(), "the owner, elsewhere, does not");
        for _ in 0..100 {
            throttle.failed("admin", guesser);
        }
        // However many failures, the login as a whole waits at most MAX_LOGIN_DELAY.
        match throttle.may_try("admin", owner) {
            Ok(()) => {}
            Err(wait) => assert!(wait <= MAX_LOGIN_DELAY, "{wait:?}"),
        }
        assert!(throttle.may_try("admin", guesser).is_err_and(|wait| wait > Duration::from_secs(60)));
        let recent = throttle.recent_failures();
        assert!(recent.len() > 100 && recent[0].login == "admin", "{}", recent.len());
        // Refusals in a loop are one entry, counted: they push no wrong password out.
        for _ in 0..1000 {
            let _ = throttle.may_try("admin", guesser);
        }
        let after = throttle.recent_failures();
        assert_eq!(after.len(), recent.len(), "no more entries");
        assert!(after[0].outcome == "throttled" && after[0].count > 1000, "{:?}", after[0]);
    }
}
