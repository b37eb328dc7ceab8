//! The clock checks' own check. `tests/at-hour.sh` runs the tests with every process's wall clock
//! shifted to a fixed local hour (the tests that could depend on the hour must pass at night and
//! at midday); this test proves that the shift took, for the test process and for the binaries
//! it starts, so that a check run on the real clock cannot pass for one at the hour asked.

use anyhow::{Context, Result, bail};
use base64::Engine;
use tests::{SUPERVISOR, Slice};

/// Minutes since local midnight of a POSIX time in a time zone.
fn local_minutes(unix_s: i64, zone: &jiff::tz::TimeZone) -> Result<i64> {
    let local = jiff::Timestamp::from_second(unix_s)?.to_zoned(zone.clone());
    Ok(i64::from(local.hour()) * 60 + i64::from(local.minute()))
}

/// `at` is within `0..=tolerance` minutes after `expected` (both minutes of the day).
fn shortly_after(at: i64, expected: i64, tolerance: i64) -> bool {
    (at - expected).rem_euclid(24 * 60) <= tolerance
}

#[tokio::test]
async fn under_the_clock_check_every_process_sees_the_hour_asked() -> Result<()> {
    let (Ok(hour), Ok(zone)) = (std::env::var("VIGIE_EXPECT_LOCAL_HOUR"), std::env::var("VIGIE_EXPECT_LOCAL_ZONE"))
    else {
        eprintln!("SKIP the clock check's own check: runs under tests/at-hour.sh only");
        return Ok(());
    };
    let zone = jiff::tz::TimeZone::get(&zone)?;
    let (h, m) = hour.split_once(':').context("VIGIE_EXPECT_LOCAL_HOUR is HH:MM")?;
    let expected = h.parse::<i64>()? * 60 + m.parse::<i64>()?;
    // The whole run takes less than an hour; the shift was set as it started.
    let tolerance = 60;

    let here = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let here = local_minutes(here, &zone)?;
    if !shortly_after(here, expected, tolerance) {
        bail!("the test process's clock reads {:02}:{:02}, not shortly after {hour}", here / 60, here % 60);
    }

    // The gateway's clock: the issue time of the token it signs at login.
    let slice = Slice::start().await?;
    let token = tests::login_token(&slice.gateway_addr, SUPERVISOR).await?;
    let payload = token.split('.').nth(1).context("a JWS has three parts")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    let issued = claims["iat"].as_i64().context("iat")?;
    let issued = local_minutes(issued, &zone)?;
    if !shortly_after(issued, expected, tolerance) {
        bail!("the gateway's clock reads {:02}:{:02}, not shortly after {hour}", issued / 60, issued % 60);
    }
    Ok(())
}
