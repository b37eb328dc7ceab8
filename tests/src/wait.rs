//! Waiting for a condition under a deadline: the one way the tests wait for something to happen
//! (never a bare sleep).

use anyhow::{Result, bail};
use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is checked again.
const RETRY: Duration = Duration::from_millis(50);

/// Checks `check` until it gives a value, for at most `deadline`. `Ok(None)` and errors are tried
/// again (a process may be restarting); the timeout names `what` and the last error.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() > deadline {
            match last_error {
                Some(e) => bail!("timed out after {deadline:?} waiting for {what} (last error: {e:#})"),
                None => bail!("timed out after {deadline:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Runs a future to its end from synchronous code (on a thread of its own, with a runtime of its
/// own: the caller may itself be on a runtime's thread).
pub fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for a blocking wait")
                    .block_on(future)
            })
            .join()
            .expect("the blocking wait's thread")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_condition_met_late_is_waited_for_and_one_never_met_times_out() {
        let mut calls = 0;
        let got = eventually("the third call", Duration::from_secs(5), || {
            calls += 1;
            let n = calls;
            async move { Ok((n >= 3).then_some(n)) }
        })
        .await
        .expect("met");
        assert_eq!(got, 3);
        let never = eventually("nothing", Duration::from_millis(120), || async {
            Err::<Option<()>, _>(anyhow::anyhow!("refused"))
        })
        .await
        .expect_err("never met");
        assert!(never.to_string().contains("last error: refused"), "{never}");
    }
}
